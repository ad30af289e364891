//! Tool pins in the reconcile loop: new tools are pinned on first sight,
//! changed ones reported once (and withheld under `enforce` by the registry),
//! and `approve` records new definitions. The comparisons are
//! [`crate::gateway::pins`]' (pure); this part keeps sled and the registry in step.

use std::collections::BTreeMap;

use crate::config::manager::ToolPinning;
use crate::gateway::pins::{self, PinRecord};
use crate::gateway::registry::Lists;
use crate::state::EventKind;

use super::{CommandError, Reconciler};

impl Reconciler {
    /// Pins tools seen for the first time and reports changed ones (once per
    /// new definition), per `security.tool_pinning`.
    pub(super) fn check_pins(&mut self, server: &str, lists: &Lists) {
        if self.desired.manager.security.tool_pinning == ToolPinning::Off {
            self.changed_tools.remove(server);
            return;
        }
        let definitions = definitions(lists);
        let pins = self.pins.entry(server.to_string()).or_default();
        let mut check = pins::check(pins, &definitions, crate::now_ms());
        // After the store was damaged a missing pin may be a lost one: the
        // tool is held as changed (withheld under `enforce`) until approved.
        let mut unverified = Vec::new();
        if self.store_damage.is_some() {
            for (tool, _) in std::mem::take(&mut check.new_pins) {
                check.changed.push(tool.clone());
                if self.unverified_reported.insert((server.to_string(), tool.clone())) {
                    unverified.push(tool);
                }
            }
        }
        let enforce = self.desired.manager.security.tool_pinning == ToolPinning::Enforce;
        let mut writes: Vec<(String, PinRecord)> = check.new_pins.clone();
        let mut messages = Vec::new();
        for (tool, diff) in &check.newly_changed {
            let Some(pin) = pins.get_mut(tool) else { continue };
            pin.reported_sha256 = definitions.iter().find(|d| &d.name == tool).map(|d| d.sha256.clone());
            writes.push((tool.clone(), pin.clone()));
            let consequence = if enforce {
                format!("it is withheld from the gateway until `mcp-manager approve {server} {tool}`")
            } else {
                format!("review it, then `mcp-manager approve {server} {tool}`")
            };
            messages.push(format!(
                "tool '{tool}' of {server} changed since it was pinned; {consequence}\n{diff}"
            ));
        }
        pins.extend(check.new_pins);
        let mut approved_now = approved(pins);
        if self.store_damage.is_some() {
            for tool in &check.changed {
                // Never equal to a definition hash: the tool counts as changed.
                approved_now.entry(tool.clone()).or_insert_with(|| "unverified".into());
            }
        }
        if !unverified.is_empty() {
            let consequence = if enforce {
                "they are withheld from the gateway until approved"
            } else {
                "review them"
            };
            messages.push(format!(
                "{} tool(s) of {server} have no trusted pin because the state store was damaged ({}); {consequence}: `mcp-manager capabilities --server {server}`, then `mcp-manager approve {server}`",
                unverified.len(),
                unverified.join(", ")
            ));
        }
        let set_pins = !writes.is_empty() || !unverified.is_empty();
        for message in messages {
            tracing::warn!(server = %server, "{message}");
            self.event(EventKind::Tools, Some(server), message);
        }
        for (tool, record) in &writes {
            if let Err(e) = self.store.put_pin(server, tool, record) {
                tracing::error!(server = %server, "cannot record the pin of tool '{tool}': {e}");
            }
        }
        if set_pins {
            self.ctx.registry.set_pins(server, approved_now);
        }
        if check.changed.is_empty() {
            self.changed_tools.remove(server);
        } else {
            self.changed_tools.insert(server.to_string(), check.changed);
        }
    }

    pub(super) fn approve(&mut self, server: &str, tool: Option<&str>) -> Result<Vec<String>, CommandError> {
        let lists = self
            .lists
            .get(server)
            .cloned()
            .ok_or_else(|| CommandError::NotFound(server.to_string()))?;
        let definitions = definitions(&lists);
        if let Some(tool) = tool
            && !definitions.iter().any(|d| d.name == tool)
        {
            return Err(CommandError::NoSuchTool(server.to_string(), tool.to_string()));
        }
        let pins = self.pins.entry(server.to_string()).or_default();
        let mut approved_tools = Vec::new();
        for d in &definitions {
            if tool.is_some_and(|t| t != d.name) || pins.get(&d.name).is_some_and(|p| p.sha256 == d.sha256) {
                continue;
            }
            let record = d.pin(crate::now_ms());
            if let Err(e) = self.store.put_pin(server, &d.name, &record) {
                tracing::error!(server = %server, "cannot record the pin of tool '{}': {e}", d.name);
            }
            pins.insert(d.name.clone(), record);
            approved_tools.push(d.name.clone());
        }
        if !approved_tools.is_empty() {
            self.ctx.registry.set_pins(server, approved(pins));
            self.event(
                EventKind::Command,
                Some(server),
                format!(
                    "approve {server}: {} tool definition(s) pinned: {}",
                    approved_tools.len(),
                    approved_tools.join(", ")
                ),
            );
            self.check_pins(server, &lists);
        }
        Ok(approved_tools)
    }
}

/// The pinned sha256 per tool, as the gateway needs it.
pub(super) fn approved(pins: &BTreeMap<String, PinRecord>) -> BTreeMap<String, String> {
    pins.iter().map(|(tool, p)| (tool.clone(), p.sha256.clone())).collect()
}

fn definitions(lists: &Lists) -> Vec<pins::Definition> {
    lists
        .tools
        .iter()
        .zip(&lists.tool_hashes)
        .map(|(t, sha)| {
            let extras = crate::gateway::registry::tool_extras(t);
            let legacy = crate::gateway::registry::legacy_tool_hash(t);
            pins::Definition {
                name: t.name.to_string(),
                sha256: sha.clone(),
                description: t.description.as_ref().map(|d| d.to_string()),
                input_schema: serde_json::Value::Object((*t.input_schema).clone()),
                extras: (!extras.is_empty())
                    .then(|| serde_json::Value::Object(extras.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
                legacy_sha256: (legacy != *sha).then_some(legacy),
            }
        })
        .collect()
}
