//! The reconciler's side of each server's lifecycle: carrying out what
//! [`Lifecycle`] says (spawning instances, telling them to stop), applying the
//! instances' reports to observed state, and the shutdown coordinator.

use std::sync::Arc;
use std::time::Duration;

use crate::config::DesiredServer;
use crate::health;
use crate::state::{EventKind, Health, InstanceRecord, Phase};
use crate::supervisor::instance::{Command, EventKind as InstanceEventKind, InstanceEvent, InstanceHandle, InstanceId};
use crate::supervisor::process;

use super::lifecycle::{Effect, Input, Slot, State};
use super::snapshot::{aggregate_health, aggregate_phase};
use super::{Reconciler, health_word};

impl Reconciler {
    // -----------------------------------------------------------------------------
    // Acting on servers.

    /// Feeds an input to a server's lifecycle and carries out what it says:
    /// spawns instances with the runtime's spec, tells instances to stop.
    pub(super) fn drive(&mut self, name: &str, input: Input) {
        let mut inputs = vec![input];
        while let Some(input) = inputs.pop() {
            let rt = self.runtimes.entry(name.to_string()).or_default();
            let effects = rt.lifecycle.apply(input);
            for effect in effects {
                match effect {
                    Effect::Spawn(slot) => {
                        let Some(spec) = rt.spec.clone() else {
                            // Cannot happen (a spec is set before every start);
                            // if it did, the slot must not stay alive unowned.
                            tracing::error!(server = name, "no spec to start {slot:?} with");
                            inputs.push(Input::Gone(slot));
                            continue;
                        };
                        let id = InstanceId {
                            server: name.to_string(),
                            replica: slot.replica,
                            generation: slot.generation,
                        };
                        let handle = InstanceHandle::spawn(id, spec, self.ctx.clone(), &mut self.tasks);
                        rt.instances.insert(slot, handle);
                    }
                    Effect::Stop(slot) => {
                        if let Some(handle) = rt.instances.get(&slot) {
                            handle.send(Command::Stop { kill: false });
                        }
                    }
                }
            }
            // Phase and health describe the current generation's instances only.
            let current = rt.lifecycle.current();
            if let Some(generation) = current
                && generation != rt.phases_gen
            {
                rt.phases.clear();
                rt.health.clear();
                rt.phases_gen = generation;
            }
            let lifecycle = &rt.lifecycle;
            let is_current =
                |replica: u32| current.is_some_and(|generation| lifecycle.is_current(Slot { generation, replica }));
            rt.phases.retain(|r, _| is_current(*r));
            rt.health.retain(|r, _| is_current(*r));
            for slot in rt.instances.keys() {
                if lifecycle.is_current(*slot) {
                    rt.phases.entry(slot.replica).or_insert(Phase::Pending);
                }
            }
            if let Some(ready) = Self::ready(rt) {
                inputs.push(ready);
            }
        }
    }

    /// A rolling replace finishes when every instance of the new generation
    /// runs, whatever made that so (a report, a scale down).
    fn ready(rt: &super::Runtime) -> Option<Input> {
        match rt.lifecycle.state() {
            State::Replacing { new, replicas, .. }
                if (0..replicas).all(|r| rt.phases.get(&r) == Some(&Phase::Running)) =>
            {
                Some(Input::Ready { generation: new })
            }
            _ => None,
        }
    }

    /// Records the spec a server is (re)started with.
    pub(super) fn set_spec(&mut self, d: &DesiredServer) {
        let rt = self.runtimes.entry(d.name.clone()).or_default();
        rt.spec = Some(Arc::new(d.spec.clone()));
        let o = self.observed.servers.entry(d.name.clone()).or_default();
        o.suspended = false;
        o.replicas = d.spec.replicas;
        o.set_applied(d);
        o.updated_at_ms = crate::now_ms();
    }

    pub(super) fn start_server(&mut self, d: &DesiredServer) {
        if self.shutting_down {
            return;
        }
        // Instances still alive (a server that failed and waits, or one
        // going down) start over with this spec: a fix to a failed server's
        // config must not be recorded as applied while the old one stays.
        let alive = self
            .runtimes
            .get(&d.name)
            .is_some_and(|rt| rt.lifecycle.current().is_some());
        self.set_spec(d);
        let replicas = d.spec.replicas;
        let input = if alive {
            Input::Restart { replicas }
        } else {
            Input::Start { replicas }
        };
        self.drive(&d.name, input);
        self.refresh_server(&d.name);
    }

    /// Stop, then start with the new spec once every old process is gone.
    pub(super) fn restart_server(&mut self, d: &DesiredServer) {
        if self.shutting_down {
            return;
        }
        self.set_spec(d);
        self.drive(
            &d.name,
            Input::Restart {
                replicas: d.spec.replicas,
            },
        );
        self.refresh_server(&d.name);
    }

    /// Tells every instance to stop; each reports `Gone` when it is down.
    pub(super) fn stop_server(&mut self, name: &str) {
        self.drive(name, Input::Stop);
        self.refresh_server(name);
        self.forget_if_gone(name);
    }

    /// A server removed from the config whose instances are all down is
    /// forgotten.
    pub(super) fn forget_if_gone(&mut self, name: &str) {
        let idle = self
            .runtimes
            .get(name)
            .is_none_or(|rt| rt.lifecycle.state() == State::Idle && rt.lifecycle.is_down());
        if idle && !self.desired.servers.contains_key(name) && self.observed.servers.contains_key(name) {
            self.runtimes.remove(name);
            self.observed.servers.remove(name);
            self.persist(name);
            self.event(EventKind::Phase, Some(name), format!("{name} removed"));
        }
    }

    /// Rolling update: start the new generation now; the old one is stopped once
    /// every new instance runs (see `on_instance`).
    pub(super) fn replace_server(&mut self, d: &DesiredServer) {
        if self.shutting_down {
            return;
        }
        self.set_spec(d);
        self.drive(
            &d.name,
            Input::Replace {
                replicas: d.spec.replicas,
            },
        );
        self.refresh_server(&d.name);
    }

    pub(super) fn update_server(&mut self, d: &DesiredServer) {
        let spec = Arc::new(d.spec.clone());
        if let Some(rt) = self.runtimes.get_mut(&d.name) {
            rt.spec = Some(spec.clone());
            for (slot, handle) in rt.instances.iter_mut() {
                if rt.lifecycle.is_current(*slot) {
                    handle.send(Command::Update(spec.clone()));
                    handle.stop_grace = spec.stop_grace_period;
                }
            }
        }
        if let Some(o) = self.observed.servers.get_mut(&d.name) {
            o.set_applied(d);
        }
        self.persist(&d.name);
    }

    pub(super) fn scale_server(&mut self, d: &DesiredServer) {
        self.drive(
            &d.name,
            Input::Scale {
                replicas: d.spec.replicas,
            },
        );
        if let Some(o) = self.observed.servers.get_mut(&d.name) {
            o.replicas = d.spec.replicas;
        }
        self.refresh_server(&d.name);
    }

    // -----------------------------------------------------------------------------
    // Instance reports.

    /// Applies an instance's report. Returns false for a routine health probe
    /// (health unchanged), which needs no immediate snapshot.
    pub(super) fn on_instance(&mut self, event: InstanceEvent) -> bool {
        let id = event.id;
        let name = id.server.clone();
        let slot = Slot {
            generation: id.generation,
            replica: id.replica,
        };
        let Some(rt) = self.runtimes.get_mut(&name) else {
            return false;
        };
        // Which processes run is tracked for every live instance (also old
        // ones going down), so recovery can find them after a crash of ours.
        if let InstanceEventKind::Phase {
            phase, pid, start_time, ..
        } = &event.kind
        {
            match (phase, pid) {
                (Phase::Running, Some(pid)) => {
                    rt.records.insert(
                        slot,
                        InstanceRecord {
                            replica: id.replica,
                            pid: *pid,
                            start_time: *start_time,
                        },
                    );
                }
                // Its process group is down by the time these are reported
                // (Stopping is reported before the stop: the record stays).
                (Phase::Backoff | Phase::Failed | Phase::Stopped, _) => {
                    rt.records.remove(&slot);
                }
                _ => {}
            }
        }
        if let InstanceEventKind::Gone { panicked } = event.kind {
            rt.records.remove(&slot);
            rt.instances.remove(&slot);
            let unexpected = panicked && rt.lifecycle.is_current(slot);
            self.drive(&name, Input::Gone(slot));
            if unexpected {
                // A bug in our supervision, not in the server: starting it again
                // at once could loop. It waits for `restart-server`.
                let message = format!(
                    "internal error: the supervisor of {id} panicked (see the log); run `mcp-manager restart-server {name}`"
                );
                tracing::error!("{message}");
                self.drive(&name, Input::Stop);
                if let Some(o) = self.observed.servers.get_mut(&name) {
                    o.last_error = Some(message.clone());
                }
                self.event(EventKind::Crash, Some(&name), message);
            }
            self.refresh_server(&name);
            self.forget_if_gone(&name);
            if !self.shutting_down {
                // A stop that a start or a plan waited for is done.
                self.reconcile(true);
            }
            return true;
        }
        if !rt.lifecycle.is_current(slot) {
            // An instance being replaced or stopped: its reports are history
            // (but its process record, above, is not).
            self.refresh_server(&name);
            return false;
        }
        match event.kind {
            InstanceEventKind::Phase {
                phase,
                pid: _,
                start_time: _,
                restarts: _,
                message,
                retry_in,
            } => {
                rt.phases.insert(id.replica, phase);
                if phase == Phase::Running {
                    rt.health.insert(id.replica, Health::Healthy);
                }
                rt.retry_at_ms = retry_in.map(|d| crate::now_ms() + u64::try_from(d.as_millis()).unwrap_or(0));
                if matches!(phase, Phase::Backoff | Phase::Failed) {
                    rt.health.insert(id.replica, Health::Critical);
                }
                if let Some(ready) = Self::ready(rt) {
                    self.drive(&name, ready);
                }
                if let Some(o) = self.observed.servers.get_mut(&name) {
                    match phase {
                        Phase::Backoff => {
                            o.restart_count += 1;
                            o.last_error = message.clone();
                        }
                        Phase::Failed => o.last_error = message.clone(),
                        Phase::Running => o.last_error = None,
                        _ => {}
                    }
                }
                let detail = match (&message, retry_in) {
                    (Some(m), Some(d)) => format!(
                        "{}: {m}; retry in {}",
                        phase.as_str(),
                        crate::config::duration::format(d)
                    ),
                    (Some(m), None) => format!("{}: {m}", phase.as_str()),
                    (None, _) => phase.as_str().to_string(),
                };
                // `logs NAME` tells the same story as LAST ERROR, in place among
                // the server's own lines.
                if matches!(phase, Phase::Running | Phase::Backoff | Phase::Failed | Phase::Stopped) {
                    self.ctx.logs.push_manager(&name, id.replica, detail.clone());
                }
                self.event_with(
                    EventKind::Phase,
                    Some(&name),
                    format!("{id} {detail}"),
                    Some(phase),
                    None,
                );
            }
            InstanceEventKind::Gone { .. } => {}
            InstanceEventKind::Health { health, probe } => {
                let before = rt.health.insert(id.replica, health);
                if let Some(o) = self.observed.servers.get_mut(&name) {
                    o.recent_health.push(probe.clone());
                    let excess = o.recent_health.len().saturating_sub(health::HISTORY);
                    o.recent_health.drain(..excess);
                }
                if before == Some(health) {
                    // Routine probe: kept in memory (and saved with the next real
                    // change); writing every probe to disk would cost more than the probe.
                    return false;
                }
                {
                    let detail = probe.error.map(|e| format!(": {e}")).unwrap_or_default();
                    self.event_with(
                        EventKind::Health,
                        Some(&name),
                        format!("{id} is {}{detail}", health_word(health)),
                        None,
                        Some(health),
                    );
                }
            }
            InstanceEventKind::Capabilities(lists) => {
                let caps = lists.capabilities();
                let tools = caps.tools.len();
                self.check_pins(&name, &lists);
                self.lists.insert(name.clone(), lists);
                if let Some(o) = self.observed.servers.get_mut(&name) {
                    let changed = o.capabilities.as_ref().is_some_and(|old| old.tools != caps.tools);
                    o.capabilities = Some(caps);
                    if changed {
                        self.event(
                            EventKind::Tools,
                            Some(&name),
                            format!("{id} tool list changed ({tools} tools)"),
                        );
                    }
                }
            }
            InstanceEventKind::Crashed { status, detected } => {
                rt.health.insert(id.replica, Health::Critical);
                if let Some(o) = self.observed.servers.get_mut(&name) {
                    o.last_exit = Some(status.clone());
                }
                tracing::warn!(server = %id, "crashed ({status}); detected {:?} ago", detected.elapsed());
                self.event_with(
                    EventKind::Crash,
                    Some(&name),
                    format!("{id} crashed: {status}"),
                    None,
                    Some(Health::Critical),
                );
            }
        }
        self.refresh_server(&name);
        true
    }

    /// Recomputes a server's observed phase and health from its instances and saves it.
    pub(super) fn refresh_server(&mut self, name: &str) {
        let Some(rt) = self.runtimes.get(name) else { return };
        let Some(o) = self.observed.servers.get_mut(name) else {
            return;
        };
        let phase = match rt.lifecycle.state() {
            // Instances alive but none of the current generation yet (a
            // replace waiting for a replica to go down): on its way up.
            State::Running { replicas, .. } | State::Replacing { replicas, .. }
                if rt.phases.is_empty() && replicas > 0 =>
            {
                Phase::Pending
            }
            State::Running { .. } | State::Replacing { .. } => aggregate_phase(rt.phases.values().copied()),
            State::Stopping { .. } => Phase::Stopping,
            State::Idle if rt.lifecycle.is_down() => Phase::Stopped,
            State::Idle => Phase::Stopping,
        };
        if phase == Phase::Running && o.running_since_ms.is_none() {
            o.running_since_ms = Some(crate::now_ms());
        } else if phase != Phase::Running {
            o.running_since_ms = None;
        }
        o.phase = phase;
        o.health = if phase == Phase::Running || phase == Phase::Backoff || phase == Phase::Failed {
            aggregate_health(rt.health.values().copied())
        } else {
            Health::Unknown
        };
        let records: Vec<InstanceRecord> = rt.records.values().cloned().collect();
        let new_processes = o.instances != records;
        o.instances = records;
        o.updated_at_ms = crate::now_ms();
        self.persist(name);
        if new_processes {
            // Recovery after a crash of the manager depends on these pids being
            // on disk: flushed soon, off this loop, not at sled's leisure.
            self.flush.notify_one();
        }
    }

    /// The shutdown coordinator: tells every instance to stop and waits until
    /// each reports its process group gone, within [`Reconciler::shutdown_limit`].
    /// Whatever is left then is killed (its whole session) and its task
    /// aborted. Process records are dropped only once their groups are gone.
    pub(super) async fn shutdown(&mut self) {
        tracing::info!("stopping every server");
        self.event(EventKind::Command, None, "shutdown".into());
        self.shutting_down = true;
        let limit = self.shutdown_limit();
        let names: Vec<String> = self.runtimes.keys().cloned().collect();
        for name in &names {
            self.drive(name, Input::Stop);
            self.refresh_server(name);
        }
        self.publish();
        let deadline = tokio::time::Instant::now() + limit;
        while self.runtimes.values().any(|rt| !rt.lifecycle.is_down()) {
            tokio::select! {
                Some(event) = self.instance_events.recv() => {
                    self.on_instance(event);
                }
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        // Reports that arrived with the deadline first: their processes are
        // gone (and their pids may be someone else's by now).
        while let Ok(event) = self.instance_events.try_recv() {
            self.on_instance(event);
        }
        let left: Vec<(String, InstanceRecord)> = self
            .runtimes
            .iter()
            .flat_map(|(name, rt)| rt.records.values().map(move |r| (name.clone(), r.clone())))
            .collect();
        if self.runtimes.values().any(|rt| !rt.lifecycle.is_down()) {
            tracing::warn!(
                "some servers did not stop within {}; killing what is left",
                crate::config::duration::format(limit)
            );
            // Member by member: a leader reaped meanwhile no longer reserves
            // its number.
            for (name, record) in &left {
                tracing::warn!(server = %name, "killing pid {} and its session", record.pid);
                process::kill_session_members(record.pid);
            }
            // Dropping a task drops its process (killing its session too) and
            // sends its `Gone`.
            self.tasks.abort_all();
        }
        while self.tasks.join_next().await.is_some() {}
        while let Ok(event) = self.instance_events.try_recv() {
            self.on_instance(event);
        }
        let names: Vec<String> = self.observed.servers.keys().cloned().collect();
        for name in names {
            if let Some(o) = self.observed.servers.get_mut(&name) {
                o.phase = if o.phase == Phase::Failed {
                    Phase::Failed
                } else {
                    Phase::Stopped
                };
                o.health = Health::Unknown;
                o.instances.clear();
                o.running_since_ms = None;
            }
            self.persist(&name);
        }
        if let Err(e) = self.store.flush() {
            tracing::error!("cannot flush observed state: {e}");
        }
    }

    /// How long stopping every server may take: the slowest stop (stdin
    /// closed, then SIGTERM and `stop_grace_period`) and a margin. Stops run in
    /// parallel, so the slowest one bounds them all.
    pub(super) fn shutdown_limit(&self) -> Duration {
        // Every live instance stops with its own spec's grace (an old
        // generation may have a longer one than the config says now).
        let grace = self
            .runtimes
            .values()
            .flat_map(|rt| rt.instances.values().map(|h| h.stop_grace))
            .chain(self.desired.servers.values().map(|d| d.spec.stop_grace_period))
            .max()
            .unwrap_or_default();
        process::STDIN_CLOSE_WAIT + grace + Duration::from_secs(3)
    }
}
