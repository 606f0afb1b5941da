//! A deterministic simulator of a fleet of daemons on one tenant's budget:
//! virtual time, no sockets, the real pacing, sharing and batching code
//! (`pace`, `share`, `budget`) of every daemon against a model of the
//! server's fixed windows. tests/it/fleet.rs runs it for 10, 100 and 1,000
//! daemons and asserts the sharing targets; README "Sharing the budget across
//! a fleet" shows its table.
//!
//! Each host is one of four kinds, by its index: a *backlog* (a replay after
//! an outage: far more events than it can send, plus a steady trickle),
//! *bursty* (a trickle, and now and then a burst of hundreds of events a
//! second for up to a minute and a half), *steady* (0.5 to 5 events a second)
//! or *idle* (one event every 20 to 200 seconds). Rates and bursts are drawn
//! from a seeded generator, so a run is the same every time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::pace::{batch_wait, Pacer};
use super::share::Observation;

/// The wall clock at virtual time zero: not a whole second, so `Reset` is
/// rounded as a real server's is.
const BASE_UNIX: f64 = 1_790_000_000.37;
/// The bytes of one event, for the batch byte bound.
const EVENT_BYTES: usize = 400;
/// How often an idle daemon looks at its queue.
const POLL: f64 = 1.0;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub daemons: usize,
    /// The tenant's budget (and each daemon's own): requests per window.
    pub limit: u32,
    pub window: Duration,
    /// Windows left out of the figures while the fleet settles.
    pub warmup_windows: u32,
    pub measured_windows: u32,
    pub seed: u64,
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
    pub linger: Duration,
    pub max_linger: Duration,
    /// Requests in flight at once while alone.
    pub max_in_flight: usize,
    /// Round-trip time of a request, drawn uniformly per request, seconds.
    pub latency: (f64, f64),
    /// Every host has a backlog (the real 10-daemon test's fleet), instead
    /// of the mix of kinds.
    pub all_backlogged: bool,
}

impl FleetConfig {
    /// The defaults of `[delivery]` against the API's 1,000 requests a minute.
    pub fn new(daemons: usize, seed: u64) -> FleetConfig {
        let defaults = crate::config::DeliveryConfig::default();
        FleetConfig {
            daemons,
            limit: defaults.requests_per_minute,
            window: Duration::from_secs(60),
            warmup_windows: 5,
            measured_windows: 20,
            seed,
            batch_max_events: defaults.batch_max_events,
            batch_max_bytes: defaults.batch_max_bytes.0 as usize,
            linger: defaults.linger,
            max_linger: defaults.max_linger,
            max_in_flight: defaults.max_in_flight,
            latency: (0.02, 0.2),
            all_backlogged: false,
        }
    }
}

/// What a run measured over its measured windows.
#[derive(Debug, Clone)]
pub struct FleetReport {
    pub daemons: usize,
    pub backlogged: usize,
    /// Requests counted by the server over what the windows allowed.
    pub budget_used: f64,
    /// Requests answered 429 over all requests.
    pub refused_share: f64,
    pub requests: u64,
    pub refused: u64,
    /// The fewest and most requests counted for a backlogged daemon, over
    /// the backlogged daemons' mean (their even share).
    pub fairness_min: f64,
    pub fairness_max: f64,
    /// From an event's arrival to its acceptance, for the hosts without a
    /// backlog, seconds.
    pub latency_p50: f64,
    pub latency_p99: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Backlog,
    Bursty,
    Steady,
    Idle,
}

impl Kind {
    fn of(index: usize) -> Kind {
        match index % 10 {
            0..=2 => Kind::Backlog,
            3 | 4 => Kind::Bursty,
            5..=7 => Kind::Steady,
            _ => Kind::Idle,
        }
    }
}

/// A host's events: a steady rate, and for a bursty host bursts of
/// `burst_length` seconds every `burst_period`.
#[derive(Debug)]
struct Arrivals {
    rate: f64,
    burst_rate: f64,
    burst_phase: f64,
    burst_period: f64,
    burst_length: f64,
    /// Events counted up to `until`, and the fraction of one carried over.
    until: f64,
    carry: f64,
}

#[derive(Debug)]
struct Daemon {
    kind: Kind,
    pacer: Pacer,
    arrivals: Arrivals,
    /// Waiting events as (arrival time, count).
    queue: VecDeque<(f64, u64)>,
    queued: u64,
    /// A refused batch, sent again before new ones.
    retry: Option<Vec<(f64, u64)>>,
    in_flight: usize,
    /// The wake that counts (older ones in the heap are ignored).
    wake_token: u64,
    counted_measured: u64,
}

#[derive(Debug)]
struct Request {
    daemon: usize,
    batch: Vec<(f64, u64)>,
    sent: f64,
    arrive: f64,
    answer: f64,
    // The server's answer, set on arrival.
    counted: bool,
    remaining: u64,
    reset: u64,
    retry_after: f64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Arrive(usize),
    Answer(usize),
    Wake(usize, u64),
}

/// The server's fixed windows, as the API's (and the receiver's).
struct Server {
    limit: u64,
    window: f64,
    start: f64,
    used: u64,
    counted_measured: u64,
}

impl Server {
    fn window_at(&mut self, t: f64) {
        while t >= self.start + self.window {
            self.start += self.window;
            self.used = 0;
        }
    }
}

/// Virtual time in whole microseconds, rounded up: a wake planned for a
/// gate never comes before it.
fn micros(t: f64) -> u64 {
    (t * 1e6).max(0.0).ceil() as u64
}

/// Runs one fleet; the same config gives the same report.
pub fn simulate(config: &FleetConfig) -> FleetReport {
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let window = config.window.as_secs_f64();
    let t0 = Instant::now();
    let at = |t: f64| t0 + Duration::from_secs_f64(t.max(0.0));
    let measure_from = config.warmup_windows as f64 * window;
    let measure_to = measure_from + config.measured_windows as f64 * window;
    let mut server = Server {
        limit: u64::from(config.limit),
        window,
        // The server's windows do not start at a whole second.
        start: 0.41,
        used: 0,
        counted_measured: 0,
    };
    server.start -= window;
    let mut daemons: Vec<Daemon> = (0..config.daemons)
        .map(|i| {
            let kind = if config.all_backlogged {
                Kind::Backlog
            } else {
                Kind::of(i)
            };
            let rate = match kind {
                Kind::Backlog => 20.0,
                Kind::Bursty => 0.1,
                Kind::Steady => rng.gen_range(0.5..5.0),
                Kind::Idle => rng.gen_range(0.005..0.05),
            };
            let mut queue = VecDeque::new();
            let mut queued = 0;
            if kind == Kind::Backlog {
                queue.push_back((0.0, 10_000_000));
                queued = 10_000_000;
            }
            Daemon {
                kind,
                pacer: Pacer::new(config.limit, config.window, t0, rng.gen()),
                arrivals: Arrivals {
                    rate,
                    burst_rate: rng.gen_range(50.0..300.0),
                    burst_phase: rng.gen_range(0.0..600.0),
                    burst_period: rng.gen_range(300.0..900.0),
                    burst_length: rng.gen_range(20.0..90.0),
                    until: 0.0,
                    carry: 0.0,
                },
                queue,
                queued,
                retry: None,
                in_flight: 0,
                wake_token: 0,
                counted_measured: 0,
            }
        })
        .collect();
    let mut requests: Vec<Request> = Vec::new();
    let mut heap: BinaryHeap<Reverse<(u64, u64, Step)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |heap: &mut BinaryHeap<Reverse<(u64, u64, Step)>>, t: f64, step: Step| {
        seq += 1;
        heap.push(Reverse((micros(t), seq, step)));
    };
    for i in 0..daemons.len() {
        // Daemons start within the first ten seconds.
        let start = rng.gen_range(0.0..10.0);
        push(&mut heap, start, Step::Wake(i, 0));
    }
    let (mut all_requests, mut refused) = (0u64, 0u64);
    let mut latencies: Vec<(f64, u64)> = Vec::new();
    while let Some(Reverse((t_us, _, step))) = heap.pop() {
        let t = t_us as f64 / 1e6;
        if t >= measure_to {
            break;
        }
        match step {
            Step::Arrive(r) => {
                server.window_at(t);
                let req = &mut requests[r];
                req.counted = server.used < server.limit;
                if req.counted {
                    server.used += 1;
                    if t >= measure_from {
                        server.counted_measured += 1;
                        daemons[req.daemon].counted_measured += 1;
                    }
                }
                if t >= measure_from {
                    all_requests += 1;
                    refused += u64::from(!req.counted);
                }
                let end = server.start + server.window;
                req.remaining = server.limit - server.used;
                req.reset = (BASE_UNIX + end).ceil() as u64;
                req.retry_after = (end - t).ceil();
            }
            Step::Answer(r) => {
                let req = &mut requests[r];
                let d = &mut daemons[req.daemon];
                d.in_flight -= 1;
                d.pacer.observe(
                    BASE_UNIX + t,
                    Observation {
                        remaining: req.remaining,
                        reset: req.reset,
                        limit: Some(server.limit),
                        counted: req.counted,
                        other_in_flight: d.in_flight,
                    },
                );
                let batch = std::mem::take(&mut req.batch);
                if req.counted {
                    if d.kind != Kind::Backlog && t >= measure_from {
                        latencies.extend(batch.iter().map(|&(a, n)| (t - a, n)));
                    }
                } else {
                    d.pacer.wait_until(at(t + req.retry_after));
                    d.retry = Some(batch);
                }
                d.wake_token += 1;
                push(&mut heap, t, Step::Wake(req.daemon, d.wake_token));
            }
            Step::Wake(i, token) => {
                let d = &mut daemons[i];
                if token != d.wake_token {
                    continue;
                }
                d.arrive_until(t);
                let unix = BASE_UNIX + t;
                if d.in_flight >= config.max_in_flight {
                    continue;
                }
                let gate = d.pacer.gate(at(t), unix);
                let next = if gate > at(t) {
                    Some(t + gate.duration_since(at(t)).as_secs_f64().max(1e-4))
                } else if let Some(batch) = d.next_batch(t, config) {
                    d.pacer.started(at(t), unix);
                    d.in_flight += 1;
                    let rtt = rng.gen_range(config.latency.0..config.latency.1);
                    requests.push(Request {
                        daemon: i,
                        batch,
                        sent: t,
                        arrive: t + rtt / 2.0,
                        answer: t + rtt,
                        counted: false,
                        remaining: 0,
                        reset: 0,
                        retry_after: 0.0,
                    });
                    let r = requests.len() - 1;
                    let req = &requests[r];
                    debug_assert!(req.sent <= req.arrive);
                    push(&mut heap, req.arrive, Step::Arrive(r));
                    push(&mut heap, req.answer, Step::Answer(r));
                    Some(t + 0.001)
                } else {
                    let wait = d.batch_wait(t, config).unwrap_or(POLL);
                    Some(t + wait.clamp(0.001, POLL))
                };
                if let Some(next) = next {
                    d.wake_token += 1;
                    push(&mut heap, next, Step::Wake(i, d.wake_token));
                }
            }
        }
    }
    let backlogged: Vec<u64> = daemons
        .iter()
        .filter(|d| d.kind == Kind::Backlog)
        .map(|d| d.counted_measured)
        .collect();
    let mean = backlogged.iter().sum::<u64>() as f64 / backlogged.len().max(1) as f64;
    let ratio = |v: Option<&u64>| v.map_or(0.0, |&v| v as f64 / mean.max(f64::MIN_POSITIVE));
    latencies.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: u64 = latencies.iter().map(|l| l.1).sum();
    let percentile = |p: f64| {
        let target = (total as f64 * p).ceil() as u64;
        let mut seen = 0;
        for &(latency, n) in &latencies {
            seen += n;
            if seen >= target {
                return latency;
            }
        }
        0.0
    };
    FleetReport {
        daemons: config.daemons,
        backlogged: backlogged.len(),
        budget_used: server.counted_measured as f64
            / (f64::from(config.limit) * f64::from(config.measured_windows)),
        refused_share: refused as f64 / all_requests.max(1) as f64,
        requests: all_requests,
        refused,
        fairness_min: ratio(backlogged.iter().min()),
        fairness_max: ratio(backlogged.iter().max()),
        latency_p50: percentile(0.5),
        latency_p99: percentile(0.99),
    }
}

impl Daemon {
    /// Adds the events that arrived up to `t`, a second at a time so each
    /// chunk's arrival time is exact to a second.
    fn arrive_until(&mut self, t: f64) {
        let a = &mut self.arrivals;
        while a.until < t {
            let to = (a.until + 1.0).min(t);
            let mut rate = a.rate;
            let into_period = ((a.until + to) / 2.0 - a.burst_phase).rem_euclid(a.burst_period);
            if self.kind == Kind::Bursty && into_period < a.burst_length {
                rate += a.burst_rate;
            }
            let events = rate * (to - a.until) + a.carry;
            let whole = events.floor();
            a.carry = events - whole;
            if whole >= 1.0 {
                self.queue.push_back(((a.until + to) / 2.0, whole as u64));
                self.queued += whole as u64;
            }
            a.until = to;
        }
    }

    /// How long the partial batch at the head waits, None when one may go.
    fn batch_wait(&self, t: f64, config: &FleetConfig) -> Option<f64> {
        if self.retry.is_some() {
            return None;
        }
        let (&(oldest, _), events) = (
            self.queue.front()?,
            self.queued.min(config.batch_max_events as u64) as usize,
        );
        let linger = self
            .pacer
            .linger(BASE_UNIX + t, config.linger, config.max_linger);
        batch_wait(
            events,
            events * EVENT_BYTES,
            Duration::from_secs_f64((t - oldest).max(0.0)),
            config.batch_max_events,
            config.batch_max_bytes,
            linger,
        )
        .map(|d| d.as_secs_f64())
    }

    /// The next batch to send now, if one is ready.
    fn next_batch(&mut self, t: f64, config: &FleetConfig) -> Option<Vec<(f64, u64)>> {
        if let Some(batch) = self.retry.take() {
            return Some(batch);
        }
        if self.queue.is_empty() || self.batch_wait(t, config).is_some() {
            return None;
        }
        let mut want = config
            .batch_max_events
            .min(config.batch_max_bytes / EVENT_BYTES)
            .max(1) as u64;
        let mut batch = Vec::new();
        while want > 0 {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            let n = front.1.min(want);
            batch.push((front.0, n));
            front.1 -= n;
            want -= n;
            self.queued -= n;
            if front.1 == 0 {
                self.queue.pop_front();
            }
        }
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let mut c = FleetConfig::new(10, 7);
        c.warmup_windows = 1;
        c.measured_windows = 3;
        let a = simulate(&c);
        let b = simulate(&c);
        assert_eq!((a.requests, a.refused), (b.requests, b.refused));
        assert_eq!(a.latency_p99, b.latency_p99);
    }
}
