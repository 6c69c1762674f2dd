//! When the evaluator runs, and what late data makes it look at again. It
//! also queues the Alertmanager re-sends that are due, at every check
//! ([`Alarms::resend_due`]).
//!
//! The evaluator thread checks about once a second whether a tick is due:
//! a rule's window moved (a minute became complete here, or a new minute
//! began for rules that include incomplete minutes), a minute passed since
//! the last tick, or the last tick was waiting for anything to be complete.
//! An alarm thus reacts as soon as a minute is complete, however long the
//! watermark delay and however late the sources are.
//!
//! Data that comes in for a minute already complete (within
//! `allowed_lateness_s`) is committed like any other, and the pipeline
//! hands the minute to [`Alarms::reevaluate_late`] once it is. For each rule
//! that has already evaluated that minute, the window ending at it is
//! evaluated again, and an instance its breaches now make fire does fire,
//! naming that minute. Such a re-evaluation never resolves an instance:
//! whether it is still breaching is for the current window, which the tick
//! that follows evaluates. A rule that has not reached the minute yet sees
//! the late data when it does.

use std::time::{Duration, Instant};

use crossbeam_channel as cb;
use strata_model::{MINUTE_MS, minute_start};

use super::Alarms;
use super::evaluate::{Changes, TickOutcome, transition_of, window_end};

/// Longest the evaluator waits at start for the HTTP listener's address.
const HTTP_ADDR_WAIT: Duration = Duration::from_secs(10);

/// What decides whether a tick is due: the window end of rules that wait
/// for complete minutes, and the current minute for those that do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WindowEnds {
    complete: Option<i64>,
    current: i64,
}

impl Alarms {
    /// The evaluator thread (see the module docs); also applies the
    /// history's retention once an hour.
    pub(super) fn evaluate_loop(&self, stop: &cb::Receiver<()>) {
        let poll = self
            .pipeline
            .settings()
            .flush_interval
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut last_tick: Option<(WindowEnds, Instant)> = None;
        let mut waiting = false;
        let mut history_retention: Option<Instant> = None;
        if !self.wait_for_http_addr(stop) {
            return;
        }
        loop {
            let now = (self.settings.clock)();
            let late = self.pipeline.take_late_minutes();
            if !late.is_empty() {
                self.reevaluate_late(&late, now);
            }
            let ends = self.window_ends(now);
            let due = !late.is_empty()
                || waiting
                || last_tick.is_none_or(|(seen, at)| {
                    seen != ends || at.elapsed() >= Duration::from_millis(MINUTE_MS as u64)
                });
            if due {
                waiting = match self.tick(now) {
                    Ok(outcome) => outcome.waiting > 0,
                    Err(_) => false,
                };
                last_tick = Some((ends, Instant::now()));
            }
            self.resend_due((self.settings.clock)());
            if history_retention.is_none_or(|at| at.elapsed() >= Duration::from_secs(3600)) {
                history_retention = Some(Instant::now());
                self.apply_history_retention();
            }
            match stop.recv_timeout(poll) {
                Err(cb::RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(cb::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Waits (at most [`HTTP_ADDR_WAIT`]) until the HTTP listener is bound
    /// when alerts link to it (rules with Alertmanagers, no
    /// `http.external_url`), so that no alert queued at start links to a
    /// port 0; `false` when stopped meanwhile.
    fn wait_for_http_addr(&self, stop: &cb::Receiver<()>) -> bool {
        if self.settings.external_url.is_some()
            || self.rules.iter().all(|r| r.alertmanagers.is_empty())
        {
            return true;
        }
        let deadline = Instant::now() + HTTP_ADDR_WAIT;
        while self.http_addr.get().is_none() && Instant::now() < deadline {
            match stop.recv_timeout(Duration::from_millis(20)) {
                Err(cb::RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(cb::RecvTimeoutError::Disconnected) => return false,
            }
        }
        true
    }

    fn window_ends(&self, now_ms: i64) -> WindowEnds {
        let delay = i64::try_from(self.settings.evaluation_delay.as_millis()).unwrap_or(i64::MAX);
        WindowEnds {
            complete: window_end(false, now_ms, self.pipeline.watermarks().forwarded()),
            current: minute_start(now_ms.saturating_sub(delay)),
        }
    }

    /// Evaluates again, for every rule whose window has moved past them, the
    /// windows ending at `minutes` (late data was committed into them), and
    /// records the instances that now fire. Minutes come oldest first; each
    /// is recorded in its own transaction, so a later one sees what an
    /// earlier one fired.
    pub(crate) fn reevaluate_late(&self, minutes: &[i64], now_ms: i64) {
        let mut eval = self.eval.lock();
        let watermarks = self.pipeline.watermarks();
        for &minute in minutes {
            let mut changes = Changes::default();
            for rule in &self.rules {
                let c = &rule.config;
                let Some(&done) = eval.newest_evaluated.get(&c.name) else {
                    continue;
                };
                // Not evaluated yet: the tick that follows catches up on it.
                if minute > done || !self.field_applies(rule, &mut eval.misconfigured) {
                    continue;
                }
                let evaluations = match self.evaluate_instances(rule, &watermarks, minute) {
                    Ok(evaluations) => evaluations,
                    Err(e) => {
                        tracing::warn!(alarm = %c.name, minute_ms = minute, error = %e, "late minute not evaluated again");
                        continue;
                    }
                };
                for (key, evaluation) in evaluations {
                    let current = eval.states.get(&key);
                    if let Some(t) = transition_of(rule, key, &evaluation, current, minute, now_ms)
                        && t.firing
                    {
                        tracing::info!(alarm = %c.name, minute_ms = minute, "data late after completeness makes an alarm fire");
                        self.transition(rule, t, &mut changes);
                    }
                }
            }
            // A failure is logged and shown by `record`; the late data stays
            // in its minute and in the windows still to come.
            let _ = self.record(&mut eval, changes, &mut TickOutcome::default());
        }
    }
}
