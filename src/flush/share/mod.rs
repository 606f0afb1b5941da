//! Sharing the tenant's request budget with its other clients (the other
//! hosts running this daemon, SDK-instrumented agents), from nothing but the
//! `X-RateLimit-*` headers of our own answers. README "Sharing the budget
//! across a fleet" explains the design and its assumptions.
//!
//! The server counts requests per tenant in fixed windows that end at
//! `X-RateLimit-Reset` (Unix seconds, rounded up); the requests it counted
//! so far are `Limit - Remaining`, and those that are not ours were sent by
//! someone else.
//!
//! * **Alone** (no one else counted in the last window length), our own
//!   budget is the only gate and a lone daemon uses all of it.
//! * **Shared**, each window has two phases, the same for every daemon since
//!   they all see the same `Reset`:
//!   - the *roll call*, the first [`ROLL_CALL`] of the window: every daemon
//!     with something to send sends exactly one request, at a uniformly
//!     random moment. The `Remaining` of that answer says how many were
//!     counted before ours; with the moment drawn uniformly, that count is
//!     (senders - 1) times the share of the roll call elapsed, so the number
//!     of senders follows from a few windows of samples. Unlike the ratio of
//!     everyone's use to ours, this estimate is the same for every daemon,
//!     whatever its current share: it is what makes the split fair.
//!   - the rest of the window: what remains, less a reserve, is split evenly
//!     among the senders, and each paces its share over the time left. Every
//!     answer re-plans from its fresh `Remaining`, so the window is spent
//!     evenly to its end whoever else (an SDK, a light host) also draws on
//!     it. A share under one request is taken with that probability, at a
//!     random moment.
//!   - the window's end: there each daemon's latest `Remaining` is a round
//!     of the others' requests old, so a plan holds at most an even share
//!     of what its answer left among the active senders, less what the
//!     others will have sent by the time ours leaves (`rest_of_window`).
//!
//!   With more senders than a window holds, each takes part in a window's
//!   roll call with the probability that keeps the roll call within it.
//! * A 429 while sharing grows the reserve by one (up to a tenth of the
//!   limit); each window without one shrinks it back towards its base.
//!
//! The state machine is pure: time is passed in (wall-clock seconds, since
//! `Reset` is wall-clock), and so is the random source, so the fleet
//! simulator (`simulation`) runs this very code in virtual time.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The first part of each window, in which every sender sends one request.
pub const ROLL_CALL: f64 = 0.2;
/// The least number of requests of a shared window left unused.
pub const SHARED_RESERVE: u64 = 2;
/// Weight kept by older roll-call samples at each new one.
const SAMPLE_DECAY: f64 = 0.9;
/// Roll-call samples (summed shares of the roll call elapsed) needed before
/// the estimate of senders is trusted over the conservative guess.
const SAMPLES_NEEDED: f64 = 0.5;

/// What the share allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Advice {
    /// Alone on the tenant's budget: only our own budget gates.
    Free,
    /// No request before this wall-clock time (Unix seconds).
    At(f64),
}

/// One answer's rate headers, and what we know about that request.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    /// `X-RateLimit-Remaining`.
    pub remaining: u64,
    /// `X-RateLimit-Reset`, Unix seconds.
    pub reset: u64,
    /// `X-RateLimit-Limit`, if sent.
    pub limit: Option<u64>,
    /// False for a 429: the server did not count the request.
    pub counted: bool,
    /// Our other requests still in flight (they may be counted already).
    pub other_in_flight: usize,
}

#[derive(Debug)]
struct Window {
    reset: u64,
    limit: u64,
    /// Our requests the server counted in this window.
    ours: u64,
    /// The lowest `Remaining` seen (answers may arrive out of order).
    remaining: u64,
    /// Requests counted in this window that were certainly not ours.
    others: u64,
    limited: bool,
}

/// The plan for one window: when the next request may start.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// The start of the window the plan is for.
    start: f64,
    /// None: nothing more in this window.
    at: Option<f64>,
    /// The spacing of our requests in this window, if paced.
    gap: Option<f64>,
    /// A moment in the roll call, which lapses with it.
    roll_call: bool,
}

/// Our roll call request, not yet answered.
#[derive(Debug, Clone, Copy)]
struct RollCall {
    /// The start of its window.
    start: f64,
    /// The share of the roll call elapsed when it left.
    elapsed: f64,
}

#[derive(Debug)]
pub struct Share {
    /// Our own budget's limit, used when the server sends no
    /// `X-RateLimit-Limit`.
    own_limit: u64,
    /// The window's length in seconds, and how long sharing lasts once
    /// someone else was seen.
    per: f64,
    window: Option<Window>,
    shared_until: f64,
    reserve: u64,
    /// Decayed sums over roll-call samples: requests counted before ours,
    /// and the share of the roll call elapsed times the participation then.
    counted_before: f64,
    elapsed: f64,
    /// The requests counted in our last window over ours: how many senders
    /// at our rate would have used it (a fallback until the roll call has
    /// said).
    last_ratio: Option<f64>,
    /// The chance of taking part in a window's roll call.
    participation: f64,
    /// Our request rate (per second) in what is left of this window after
    /// the roll call: at first an even share among the roll call's senders,
    /// then corrected at each answer by the same amount every sender
    /// computes, so the rates stay even while the window is spent to its end
    /// whatever SDKs and light hosts draw (see `rest_of_window`).
    rate: Option<f64>,
    /// The senders' measured rate (per second, all of them) after the roll
    /// call, from the requests counted between two of our answers.
    fleet_rate: Option<f64>,
    /// When our last counted answer of the current window came, and the
    /// requests counted then.
    last_used: Option<(f64, u64)>,
    plan: Option<Plan>,
    roll_call: Option<RollCall>,
    /// When our latest request started.
    last_start: f64,
    rng: SmallRng,
}

impl Share {
    /// `seed` drives the random moments; daemons must not share one.
    pub fn new(own_limit: u32, per: std::time::Duration, seed: u64) -> Share {
        Share {
            own_limit: u64::from(own_limit.max(1)),
            per: per.as_secs_f64().max(0.001),
            window: None,
            shared_until: f64::NEG_INFINITY,
            reserve: SHARED_RESERVE,
            counted_before: 0.0,
            elapsed: 0.0,
            participation: 1.0,
            last_ratio: None,
            rate: None,
            fleet_rate: None,
            last_used: None,
            plan: None,
            roll_call: None,
            last_start: f64::NEG_INFINITY,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// True while others are known to draw on the tenant's budget.
    pub fn shared(&self, now: f64) -> bool {
        self.shared_until > now
    }

    /// Requests of a shared window left alone now.
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Requests counted in the current window that were not ours, as far as
    /// is known.
    pub fn others_in_window(&self) -> u64 {
        self.window.as_ref().map_or(0, |w| w.others)
    }

    /// The estimated number of clients sending on the tenant's budget (one
    /// while alone).
    pub fn senders(&self) -> f64 {
        if self.elapsed >= SAMPLES_NEEDED {
            1.0 + self.counted_before / self.elapsed
        } else {
            // Before the roll call has said: everyone counted so far in the
            // window may be a sender of their own, and the last window held
            // as many as would have used it at our rate (high guesses, so a
            // newcomer starts modest rather than greedy).
            self.window
                .as_ref()
                .map_or(1.0, |w| (w.others + 1) as f64)
                .max(self.last_ratio.unwrap_or(0.0))
                .max(2.0)
        }
    }

    /// The average time between our requests when the budget is shared
    /// evenly, in seconds; None while alone. The flusher lets a partial
    /// batch wait this long (within `max_linger`) for more events rather
    /// than spend a scarce request on a few.
    pub fn request_interval(&self, now: f64) -> Option<f64> {
        if !self.shared(now) {
            return None;
        }
        let per_window = self.usable() / self.senders();
        Some(self.per / per_window.max(f64::MIN_POSITIVE))
    }

    fn limit(&self) -> u64 {
        self.window.as_ref().map_or(self.own_limit, |w| w.limit)
    }

    /// Requests of a window the senders may spend between them.
    fn usable(&self) -> f64 {
        self.limit().saturating_sub(self.reserve).max(1) as f64
    }

    /// The reserve a window starts from: 2%, for the random spread of the
    /// senders' requests, and at least [`SHARED_RESERVE`].
    fn base_reserve(limit: u64) -> u64 {
        limit.div_ceil(50).max(SHARED_RESERVE)
    }

    /// The start of the window holding `now`, on the grid of the last known
    /// `Reset` (windows are contiguous).
    fn window_start(&self, reset: u64, now: f64) -> f64 {
        let first = reset as f64 - self.per;
        let k = ((now - first) / self.per).floor();
        first + k * self.per
    }

    /// The last moment of a window starting at `start` that is certainly in
    /// it: `Reset` is rounded up, so the window may end up to a second
    /// before it.
    fn certain_end(&self, start: f64) -> f64 {
        start + self.per - (self.per / 4.0).min(1.0)
    }

    /// When the next request may start.
    pub fn advice(&mut self, now: f64) -> Advice {
        let Some(reset) = self.window.as_ref().map(|w| w.reset) else {
            return Advice::Free;
        };
        if !self.shared(now) {
            return match &self.window {
                // Alone, and our own requests spent the window: our own
                // budget already waits for it. The window ends in the second
                // before `Reset`; nothing is sent before that second starts.
                Some(w) if w.remaining == 0 && now < reset as f64 => Advice::At(reset as f64 - 1.0),
                _ => Advice::Free,
            };
        }
        let start = self.window_start(reset, now);
        let plan = match self.plan {
            // A roll call moment missed (nothing was ready then) lapses: a
            // request now would come unplanned into a window others have
            // planned to spend.
            Some(p)
                if (p.start - start).abs() < self.per / 2.0
                    && p.roll_call
                    && p.at.is_some()
                    && now >= start + ROLL_CALL * self.per =>
            {
                let p = self.late_plan(now, start);
                self.plan = Some(p);
                p
            }
            Some(p) if (p.start - start).abs() < self.per / 2.0 => p,
            _ => {
                let p = self.fresh_plan(now, start);
                self.plan = Some(p);
                p
            }
        };
        Advice::At(plan.at.unwrap_or(start + self.per))
    }

    /// The plan for a window in which we have had no answer yet: a moment
    /// in its roll call, or, when the roll call is over, [`Share::late_plan`].
    fn fresh_plan(&mut self, now: f64, start: f64) -> Plan {
        self.participation = (0.95 * self.usable() / self.senders()).clamp(0.01, 1.0);
        let roll_call_end = start + ROLL_CALL * self.per;
        if now >= roll_call_end {
            return self.late_plan(now, start);
        }
        let at = (self.rng.gen::<f64>() < self.participation)
            .then(|| random_moment(&mut self.rng, now.max(start), roll_call_end));
        Plan {
            start,
            at,
            gap: None,
            roll_call: true,
        }
    }

    /// After the roll call, with no answer in this window yet: one request
    /// at a random moment of what is left, but only if the senders' even
    /// share of what the roll call leaves is a request or more; otherwise
    /// the next roll call.
    fn late_plan(&mut self, now: f64, start: f64) -> Plan {
        let participants = self.participants();
        let share = (self.usable() - participants) / participants;
        let end = self.certain_end(start);
        let at = (share >= 1.0 && now < end).then(|| random_moment(&mut self.rng, now, end));
        Plan {
            start,
            at,
            gap: None,
            roll_call: false,
        }
    }

    /// The expected number of senders in a window's roll call.
    fn participants(&self) -> f64 {
        (self.participation * self.senders()).max(1.0)
    }

    /// A request starts now.
    pub fn started(&mut self, now: f64) {
        self.last_start = now;
        let Some(reset) = self.window.as_ref().map(|w| w.reset) else {
            return;
        };
        let start = self.window_start(reset, now);
        let ours_in_window = self
            .window
            .as_ref()
            .filter(|w| (w.reset as f64 - self.per - start).abs() < self.per / 2.0)
            .map_or(0, |w| w.ours);
        let elapsed = (now - start) / (ROLL_CALL * self.per);
        if ours_in_window == 0 && (0.0..1.0).contains(&elapsed) {
            self.roll_call = Some(RollCall { start, elapsed });
        }
        if let Some(p) = &mut self.plan {
            if (p.start - start).abs() < self.per / 2.0 {
                // Paced: the next at the same spacing until an answer
                // re-plans; otherwise the answer plans the next one.
                p.at = p.gap.map(|gap| now + gap);
            }
        }
    }

    /// Takes one answer's headers; `now` is the wall clock in seconds.
    pub fn observe(&mut self, now: f64, obs: Observation) {
        let participants = self.participants();
        let limit = obs.limit.unwrap_or(self.own_limit).max(1);
        let base = Share::base_reserve(limit);
        let max_reserve = (limit / 10).max(base);
        // Which window the answer belongs to. `Reset` may jitter by a second
        // on some servers; a stale answer from an older window is ignored.
        let window = match &mut self.window {
            Some(w) if obs.reset + 1 < w.reset => return,
            Some(w) if obs.reset <= w.reset + 1 => {
                w.reset = w.reset.max(obs.reset);
                w
            }
            slot => {
                if let Some(w) = slot.as_ref().filter(|w| w.ours > 0) {
                    let used = w.limit.saturating_sub(w.remaining);
                    self.last_ratio = Some(used as f64 / w.ours as f64);
                }
                match slot.as_ref() {
                    Some(w) if !w.limited => {
                        self.reserve = self.reserve.saturating_sub(1).max(base);
                    }
                    Some(_) => {}
                    None => self.reserve = base,
                }
                self.last_used = None;
                self.rate = None;
                self.fleet_rate = None;
                slot.insert(Window {
                    reset: obs.reset,
                    limit,
                    ours: 0,
                    remaining: limit,
                    others: 0,
                    limited: false,
                })
            }
        };
        window.limit = limit;
        window.remaining = window.remaining.min(obs.remaining);
        if obs.counted {
            window.ours += 1;
        }
        let used = limit.saturating_sub(window.remaining);
        let others = used.saturating_sub(window.ours + obs.other_in_flight as u64);
        window.others = window.others.max(others);
        if window.others > 0 {
            // Sharing lasts two windows, or two of our requests at an even
            // share when there are more senders than a window holds: a
            // daemon that waits its turn must not forget the others and
            // burst as if alone.
            let interval = self.per * participants.max(1.0) / (limit as f64 * 0.95);
            self.shared_until = now + 2.0 * self.per.max(interval);
        }
        let shared = self.shared_until > now;
        if !obs.counted && shared {
            window.limited = true;
            self.reserve = (self.reserve + 1).min(max_reserve);
        }
        // A roll-call sample: the requests counted before ours.
        let window_start = obs.reset as f64 - self.per;
        let roll_call = self
            .roll_call
            .filter(|r| (r.start - window_start).abs() < self.per / 2.0);
        if let Some(RollCall { elapsed, .. }) = roll_call {
            self.roll_call = None;
            if obs.counted && obs.other_in_flight == 0 && window.ours == 1 {
                self.counted_before = SAMPLE_DECAY * self.counted_before + others as f64;
                self.elapsed = SAMPLE_DECAY * self.elapsed + elapsed * self.participation;
            }
        }
        let roll_call_end = window_start + ROLL_CALL * self.per;
        let certain_end = window_start + self.per - (self.per / 4.0).min(1.0);
        if obs.counted {
            if let (Some((then, before)), Some(rate)) = (self.last_used, self.rate) {
                let elapsed = now - then;
                if then >= roll_call_end && elapsed > 0.0 {
                    let fleet = used.saturating_sub(before) as f64 / elapsed;
                    self.fleet_rate = Some(self.fleet_rate.map_or(fleet, |f| (f + fleet) / 2.0));
                    let left = certain_end - now;
                    // No correction in the window's last stretch (two of our
                    // answers, and at least a tenth of the window): there the
                    // target, what is left over the time left, swings with
                    // each single request, and chasing it bursts past the
                    // window.
                    let last_stretch = (2.0 * elapsed).max(self.per / 10.0);
                    if left > last_stretch {
                        // The senders' rate over what the rest of the window
                        // allows: every sender sees the same numbers, so all
                        // correct by about the same amount, together at most
                        // half the gap at each round of answers (more would
                        // overshoot and swing).
                        let target =
                            (window.remaining as f64 - self.reserve as f64).max(0.0) / left;
                        let gain = (elapsed / (self.per / 30.0)).min(0.5);
                        let correction = (target - fleet) * gain / participants;
                        self.rate =
                            Some((rate + correction).clamp(target / participants / 4.0, target));
                    }
                }
            }
            self.last_used = Some((now, used));
        }
        if shared {
            let start = obs.reset as f64 - self.per;
            let (at, gap) = self.rest_of_window(now, start);
            self.plan = Some(Plan {
                start,
                at,
                gap,
                roll_call: false,
            });
        }
    }

    /// After an answer in the window starting at `start`: when our next
    /// request of that window goes, if at all, and at what spacing.
    fn rest_of_window(&mut self, now: f64, start: f64) -> (Option<f64>, Option<f64>) {
        let participants = self.participants();
        let Some(window) = self.window.as_ref() else {
            return (None, None);
        };
        let used = window.limit.saturating_sub(window.remaining) as f64;
        let roll_call_end = start + ROLL_CALL * self.per;
        let mut remaining = window.remaining as f64;
        if now < roll_call_end {
            // The rest of the roll call is still to come.
            remaining -= (participants - used).max(0.0);
        }
        let available = remaining - self.reserve as f64;
        let from = now.max(roll_call_end);
        let span = self.certain_end(start) - from;
        if available < 1.0 || span <= 0.0 {
            return (None, None);
        }
        let rate = match self.rate {
            Some(rate) if now >= roll_call_end => rate,
            _ => available / span / participants,
        };
        self.rate = Some(rate);
        // The senders still active, as many as would send the fleet's
        // measured rate at ours: the light hosts of the roll call that left
        // their share do not count, so the busy ones may take it.
        let active = self.fleet_rate.map_or(participants, |fleet| {
            (fleet / rate.max(f64::MIN_POSITIVE)).clamp(1.0, participants)
        });
        // Never more than an even share among them of what the answer left.
        let ours = (rate * span).min(available / active);
        if ours <= 0.0 {
            return (None, None);
        }
        let gap = span / ours;
        let paced = ours >= 1.0;
        let at = if !paced {
            from + self.rng.gen::<f64>() * span
        } else if now < roll_call_end {
            // The first after the roll call: at a random phase, so the
            // senders do not start together.
            from + self.rng.gen::<f64>() * gap
        } else {
            (self.last_start + gap).max(now)
        };
        // Near the window's end this answer's `Remaining` is a round of the
        // others' requests old by the time ours leaves: what they will have
        // sent by then (at their measured rate, or an even share's) comes
        // off, and the even share of the rest is a request, or that chance
        // of one. This keeps the senders' last requests from spending more
        // than the window holds.
        let others_rate = self
            .fleet_rate
            .map_or(rate * (participants - 1.0), |fleet| (fleet - rate).max(0.0));
        let left_then = available - others_rate * (at - from).max(0.0);
        let claim = (left_then / active).min(ours);
        if claim >= 1.0 {
            (Some(at), paced.then_some(gap))
        } else if self.rng.gen::<f64>() < claim {
            (Some(at), None)
        } else {
            (None, None)
        }
    }
}

/// A uniformly random moment in `[from, to)`; `from` when the span is empty
/// (which `gen_range` would panic on).
fn random_moment(rng: &mut SmallRng, from: f64, to: f64) -> f64 {
    from + rng.gen::<f64>() * (to - from).max(0.0)
}

#[cfg(test)]
mod tests;
