//! The lifecycle of one server: a pure state machine (no tasks, no time, no IO).
//!
//! The reconciler feeds it what it decided (start, stop, restart, replace,
//! scale) and what the instances reported (a generation is ready, an instance
//! is gone), and executes the [`Effect`]s it returns: spawn an instance, tell an
//! instance to stop. Everything that was once spread over flags (an operation
//! in flight, instances retiring, stops in flight, a start waiting for a stop)
//! is this one value, so these rules hold by construction and are checked by a
//! property test:
//!
//! - an instance of a replica is never spawned while another instance of that
//!   replica is still alive, except beside the old generation of a rolling
//!   replace (which keeps serving until the new one is ready);
//! - a Stop is never lost: after it, every live instance has been told to stop
//!   and nothing new is spawned until a start is asked for;
//! - an instance counts as alive until its actor reports it gone (its process
//!   group is down), not when it was told to stop.

use std::collections::BTreeSet;

/// A generation: one start of a server (a restart or replace makes a new one).
pub type Generation = u64;

/// One instance: a replica of a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    pub generation: Generation,
    pub replica: u32,
}

/// Where a server is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Nothing runs and nothing should.
    Idle,
    /// `replicas` instances of `generation` should run.
    Running { generation: Generation, replicas: u32 },
    /// Rolling replace: `new` starts while `old` keeps serving; `old` is stopped
    /// once every instance of `new` runs.
    Replacing {
        old: Generation,
        new: Generation,
        replicas: u32,
    },
    /// Everything is going down; then start `replicas` instances, if `then` says so.
    Stopping { then: Option<u32> },
}

/// What the lifecycle tells the reconciler to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Spawn(Slot),
    Stop(Slot),
}

/// What happens to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Run `replicas` instances; a server already up keeps its instances.
    Start {
        replicas: u32,
    },
    Stop,
    /// Stop everything, then start afresh.
    Restart {
        replicas: u32,
    },
    /// Start a new generation beside the running one, then stop the old one.
    Replace {
        replicas: u32,
    },
    /// Change the number of instances of the running generation.
    Scale {
        replicas: u32,
    },
    /// Every instance of `generation` reported running.
    Ready {
        generation: Generation,
    },
    /// An instance's actor ended: its process group is gone.
    Gone(Slot),
}

#[derive(Debug, Clone)]
pub struct Lifecycle {
    state: State,
    /// Instances spawned and not yet gone.
    live: BTreeSet<Slot>,
    /// Of those, the ones told to stop.
    stopping: BTreeSet<Slot>,
    next_gen: Generation,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            state: State::Idle,
            live: BTreeSet::new(),
            stopping: BTreeSet::new(),
            next_gen: 1,
        }
    }
}

impl Lifecycle {
    pub fn state(&self) -> State {
        self.state
    }

    /// The generation that should be running, if any.
    pub fn current(&self) -> Option<Generation> {
        match self.state {
            State::Running { generation, .. } | State::Replacing { new: generation, .. } => Some(generation),
            _ => None,
        }
    }

    /// Whether reports of `slot` describe the server as it should be: it is
    /// alive, of the current generation and not being stopped.
    pub fn is_current(&self, slot: Slot) -> bool {
        self.current() == Some(slot.generation) && self.live.contains(&slot) && !self.stopping.contains(&slot)
    }

    /// No instance is alive.
    pub fn is_down(&self) -> bool {
        self.live.is_empty()
    }

    /// A start is decided but waits for instances to go down first.
    pub fn start_pending(&self) -> bool {
        matches!(self.state, State::Stopping { then: Some(_) })
    }

    pub fn live(&self) -> impl Iterator<Item = Slot> + '_ {
        self.live.iter().copied()
    }

    /// Applies `input` and returns what to do now.
    pub fn apply(&mut self, input: Input) -> Vec<Effect> {
        self.state = self.transition(input);
        if let State::Stopping { then } = self.state
            && self.live.is_empty()
        {
            self.state = match then {
                Some(replicas) => self.fresh(replicas),
                None => State::Idle,
            };
        }
        // A replacement without instances is ready at once.
        if let State::Replacing { new, replicas: 0, .. } = self.state {
            self.state = State::Running {
                generation: new,
                replicas: 0,
            };
        }
        self.effects()
    }

    fn fresh(&mut self, replicas: u32) -> State {
        let generation = self.next_gen;
        self.next_gen += 1;
        State::Running { generation, replicas }
    }

    fn transition(&mut self, input: Input) -> State {
        use State::*;
        match (self.state, input) {
            (_, Input::Gone(slot)) => {
                self.live.remove(&slot);
                self.stopping.remove(&slot);
                self.state
            }
            (Idle, Input::Start { replicas } | Input::Restart { replicas } | Input::Replace { replicas }) => {
                self.fresh(replicas)
            }
            (Idle, Input::Scale { .. } | Input::Ready { .. } | Input::Stop) => Idle,
            (_, Input::Stop) => Stopping { then: None },
            (
                Stopping { .. },
                Input::Start { replicas } | Input::Restart { replicas } | Input::Replace { replicas },
            ) => Stopping { then: Some(replicas) },
            (Stopping { then }, Input::Scale { replicas }) => Stopping {
                then: then.map(|_| replicas),
            },
            (Stopping { then }, Input::Ready { .. }) => Stopping { then },
            (_, Input::Restart { replicas }) => Stopping { then: Some(replicas) },
            (Running { generation, .. }, Input::Start { replicas } | Input::Scale { replicas }) => {
                Running { generation, replicas }
            }
            (Running { generation, .. }, Input::Replace { replicas }) => {
                let Running { generation: new, .. } = self.fresh(replicas) else {
                    unreachable!("fresh() makes a Running state")
                };
                Replacing {
                    old: generation,
                    new,
                    replicas,
                }
            }
            (Running { .. }, Input::Ready { .. }) => self.state,
            (Replacing { old, new, .. }, Input::Start { replicas } | Input::Scale { replicas }) => {
                Replacing { old, new, replicas }
            }
            (Replacing { old, .. }, Input::Replace { replicas }) => {
                // The half-started generation is dropped; the old one keeps serving.
                let Running { generation: new, .. } = self.fresh(replicas) else {
                    unreachable!("fresh() makes a Running state")
                };
                Replacing { old, new, replicas }
            }
            (Replacing { new, replicas, .. }, Input::Ready { generation }) if generation == new => Running {
                generation: new,
                replicas,
            },
            (Replacing { .. }, Input::Ready { .. }) => self.state,
        }
    }

    /// Makes the live instances match the state: stops what should not run
    /// (once), spawns what is missing when no other instance of its replica is
    /// still alive.
    fn effects(&mut self) -> Vec<Effect> {
        let (wanted, kept_old) = match self.state {
            State::Running { generation, replicas } => (Some((generation, replicas)), None),
            State::Replacing { old, new, replicas } => (Some((new, replicas)), Some(old)),
            State::Idle | State::Stopping { .. } => (None, None),
        };
        let wanted_slot = |s: &Slot| wanted.is_some_and(|(generation, n)| s.generation == generation && s.replica < n);
        let mut effects = Vec::new();
        let to_stop: Vec<Slot> = self
            .live
            .iter()
            .filter(|s| !wanted_slot(s) && Some(s.generation) != kept_old && !self.stopping.contains(s))
            .copied()
            .collect();
        for slot in to_stop {
            self.stopping.insert(slot);
            effects.push(Effect::Stop(slot));
        }
        if let Some((generation, replicas)) = wanted {
            for replica in 0..replicas {
                let slot = Slot { generation, replica };
                let blocked = self
                    .live
                    .iter()
                    .any(|l| l.replica == replica && Some(l.generation) != kept_old);
                if !blocked {
                    self.live.insert(slot);
                    effects.push(Effect::Spawn(slot));
                }
            }
        }
        effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slot(generation: Generation, replica: u32) -> Slot {
        Slot { generation, replica }
    }

    #[test]
    fn start_spawns_each_replica_once() {
        let mut l = Lifecycle::default();
        assert_eq!(
            l.apply(Input::Start { replicas: 2 }),
            [Effect::Spawn(slot(1, 0)), Effect::Spawn(slot(1, 1))]
        );
        assert_eq!(l.apply(Input::Start { replicas: 2 }), []);
        assert_eq!(
            l.state(),
            State::Running {
                generation: 1,
                replicas: 2
            }
        );
    }

    /// Issue 11, defect 5: `stop-server X; start-server X` starts the new
    /// process only once the old one is gone.
    #[test]
    fn a_start_during_a_stop_waits_for_the_stop() {
        let mut l = Lifecycle::default();
        l.apply(Input::Start { replicas: 1 });
        assert_eq!(l.apply(Input::Stop), [Effect::Stop(slot(1, 0))]);
        assert_eq!(l.apply(Input::Start { replicas: 1 }), []);
        assert!(l.start_pending());
        assert_eq!(l.apply(Input::Gone(slot(1, 0))), [Effect::Spawn(slot(2, 0))]);
        // A stale readiness report of the old generation changes nothing.
        assert_eq!(l.apply(Input::Ready { generation: 1 }), []);
        assert_eq!(
            l.state(),
            State::Running {
                generation: 2,
                replicas: 1
            }
        );
    }

    #[test]
    fn a_stop_after_a_pending_start_cancels_it() {
        let mut l = Lifecycle::default();
        l.apply(Input::Start { replicas: 1 });
        l.apply(Input::Restart { replicas: 1 });
        l.apply(Input::Stop);
        assert_eq!(l.apply(Input::Gone(slot(1, 0))), []);
        assert_eq!(l.state(), State::Idle);
    }

    #[test]
    fn a_rolling_replace_stops_the_old_generation_when_the_new_one_is_ready() {
        let mut l = Lifecycle::default();
        l.apply(Input::Start { replicas: 2 });
        assert_eq!(
            l.apply(Input::Replace { replicas: 2 }),
            [Effect::Spawn(slot(2, 0)), Effect::Spawn(slot(2, 1))]
        );
        assert_eq!(
            l.apply(Input::Ready { generation: 2 }),
            [Effect::Stop(slot(1, 0)), Effect::Stop(slot(1, 1))]
        );
        assert!(l.is_current(slot(2, 0)) && !l.is_current(slot(1, 0)));
    }

    /// The leftover of the first redesign: scaling 2 → 1 → 2 quickly started
    /// replica 1 beside the one still stopping.
    #[test]
    fn scaling_back_up_waits_for_the_replica_going_down() {
        let mut l = Lifecycle::default();
        l.apply(Input::Start { replicas: 2 });
        assert_eq!(l.apply(Input::Scale { replicas: 1 }), [Effect::Stop(slot(1, 1))]);
        assert_eq!(l.apply(Input::Scale { replicas: 2 }), []);
        assert_eq!(l.apply(Input::Gone(slot(1, 1))), [Effect::Spawn(slot(1, 1))]);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Start(u32),
        Stop,
        Restart(u32),
        Replace(u32),
        Scale(u32),
        /// The current generation (or an old one) becomes ready.
        Ready(bool),
        /// The n-th stopping instance (mod their count) finishes going down.
        Gone(usize),
        /// The n-th live instance ends by itself (its task panicked).
        Died(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u32..4).prop_map(Step::Start),
            Just(Step::Stop),
            (0u32..4).prop_map(Step::Restart),
            (0u32..4).prop_map(Step::Replace),
            (0u32..4).prop_map(Step::Scale),
            any::<bool>().prop_map(Step::Ready),
            (0usize..8).prop_map(Step::Gone),
            (0usize..8).prop_map(Step::Gone),
            (0usize..8).prop_map(Step::Died),
        ]
    }

    /// Applies an input and checks the invariants; returns its effects.
    fn checked(l: &mut Lifecycle, input: Input) -> Vec<Effect> {
        let mut live_before = l.live.clone();
        if let Input::Gone(gone) = input {
            // Its replica may start again in the same slot at once.
            live_before.remove(&gone);
        }
        let effects = l.apply(input);
        let kept_old = match l.state {
            State::Replacing { old, .. } => Some(old),
            _ => None,
        };
        for e in &effects {
            match e {
                Effect::Spawn(s) => {
                    assert!(!live_before.contains(s), "{s:?} spawned twice");
                    let others: Vec<_> = l
                        .live
                        .iter()
                        .filter(|o| o.replica == s.replica && *o != s && Some(o.generation) != kept_old)
                        .collect();
                    assert!(others.is_empty(), "{s:?} spawned beside {others:?} ({:?})", l.state);
                }
                Effect::Stop(s) => assert!(live_before.contains(s) || l.live.contains(s), "stop of a dead {s:?}"),
            }
        }
        // Never two live, running generations of one replica (the old side of
        // a rolling replace aside).
        for replica in 0..4 {
            let running: Vec<_> = l
                .live
                .iter()
                .filter(|s| s.replica == replica && !l.stopping.contains(s) && Some(s.generation) != kept_old)
                .collect();
            assert!(running.len() <= 1, "replica {replica}: {running:?}");
        }
        if matches!(input, Input::Stop) {
            assert!(l.live.iter().all(|s| l.stopping.contains(s)), "a stop was lost");
            assert!(!effects.iter().any(|e| matches!(e, Effect::Spawn(_))));
        }
        assert!(l.stopping.is_subset(&l.live));
        effects
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn random_events_keep_the_lifecycle_safe(steps in proptest::collection::vec(step(), 0..40)) {
            let mut l = Lifecycle::default();
            for s in steps {
                let input = match s {
                    Step::Start(n) => Input::Start { replicas: n },
                    Step::Stop => Input::Stop,
                    Step::Restart(n) => Input::Restart { replicas: n },
                    Step::Replace(n) => Input::Replace { replicas: n },
                    Step::Scale(n) => Input::Scale { replicas: n },
                    Step::Ready(current) => Input::Ready {
                        generation: if current { l.current().unwrap_or(0) } else { l.next_gen.saturating_sub(2) },
                    },
                    Step::Gone(i) => {
                        // Only instances told to stop end (actors end on Stop).
                        let stopping: Vec<Slot> = l.stopping.iter().copied().collect();
                        if stopping.is_empty() { continue; }
                        Input::Gone(stopping[i % stopping.len()])
                    }
                    Step::Died(i) => {
                        let live: Vec<Slot> = l.live.iter().copied().collect();
                        if live.is_empty() { continue; }
                        Input::Gone(live[i % live.len()])
                    }
                };
                checked(&mut l, input);
            }
            // Always ends Stopped after Stop, once every instance is down.
            checked(&mut l, Input::Stop);
            while let Some(s) = l.stopping.iter().next().copied() {
                let effects = checked(&mut l, Input::Gone(s));
                prop_assert!(effects.is_empty());
            }
            prop_assert_eq!(l.state(), State::Idle);
            prop_assert!(l.is_down());
        }
    }
}
