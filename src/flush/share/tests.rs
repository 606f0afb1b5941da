//! The share's state machine, answer by answer.

use super::*;
use std::time::Duration;

fn obs(remaining: u64, reset: u64, counted: bool) -> Observation {
    Observation {
        remaining,
        reset,
        limit: Some(100),
        counted,
        other_in_flight: 0,
    }
}

#[test]
fn alone_it_is_free_until_its_own_requests_spend_the_window() {
    let mut s = Share::new(100, Duration::from_secs(60), 1);
    assert_eq!(s.advice(1000.0), Advice::Free);
    s.started(1000.0);
    s.observe(1000.1, obs(99, 1060, true));
    assert_eq!(s.advice(1000.2), Advice::Free);
    assert!(!s.shared(1000.2));
    // Our own 100th request: wait for the second before the reset.
    s.window.as_mut().unwrap().ours = 99;
    s.observe(1030.0, obs(0, 1060, true));
    assert_eq!(s.advice(1030.0), Advice::At(1059.0));
}

#[test]
fn someone_elses_requests_make_it_shared_and_the_next_window_starts_with_a_roll_call() {
    let mut s = Share::new(100, Duration::from_secs(60), 2);
    s.started(1000.0);
    // 11 counted, one ours: others draw on the budget.
    s.observe(1000.1, obs(89, 1060, true));
    assert!(s.shared(1000.1));
    assert_eq!(s.others_in_window(), 10);
    // Next window [1060, 1120): its roll call is [1060, 1072).
    let Advice::At(t) = s.advice(1061.0) else {
        panic!("shared: a moment is planned")
    };
    assert!((1061.0..1072.0).contains(&t), "{t}");
}

#[test]
fn the_roll_call_estimates_the_senders_whatever_our_own_share() {
    // 50 senders: at a share x of the roll call, 49 x were counted
    // before us (on average); the estimate follows within a few windows.
    let mut s = Share::new(1000, Duration::from_secs(60), 3);
    // A first answer shows others: shared from then on.
    s.observe(
        1001.0,
        Observation {
            remaining: 900,
            reset: 1060,
            limit: Some(1000),
            counted: true,
            other_in_flight: 0,
        },
    );
    let mut reset = 1120;
    let mut rng = SmallRng::seed_from_u64(9);
    for _ in 0..25 {
        let start = reset as f64 - 60.0;
        let Advice::At(t) = s.advice(start + 0.001) else {
            panic!()
        };
        let t = t.max(start);
        s.started(t);
        let x = (t - start) / 12.0;
        let before = (0..49).filter(|_| rng.gen::<f64>() < x).count() as u64;
        s.observe(
            t + 0.05,
            Observation {
                remaining: 1000 - before - 1,
                reset,
                limit: Some(1000),
                counted: true,
                other_in_flight: 0,
            },
        );
        reset += 60;
    }
    let n = s.senders();
    assert!((35.0..65.0).contains(&n), "{n}");
}

#[test]
fn a_429_while_shared_raises_the_reserve_and_a_clean_window_lowers_it() {
    let mut s = Share::new(100, Duration::from_secs(5), 4);
    s.observe(1000.0, obs(90, 1005, true));
    assert!(s.shared(1000.0));
    assert_eq!(s.reserve(), SHARED_RESERVE);
    s.observe(1001.0, obs(0, 1005, false));
    s.observe(1001.5, obs(0, 1005, false));
    assert_eq!(s.reserve(), SHARED_RESERVE + 2, "one more per 429");
    // Two windows: the next one (limited) keeps it, a clean one lowers it.
    s.observe(1006.0, obs(50, 1010, true));
    s.observe(1011.0, obs(50, 1015, true));
    assert_eq!(s.reserve(), SHARED_RESERVE + 1);
}

#[test]
fn what_remains_is_split_among_the_senders_and_paced_to_the_window_end() {
    let mut s = Share::new(1000, Duration::from_secs(60), 5);
    let answer = |remaining| Observation {
        remaining,
        reset: 1060,
        limit: Some(1000),
        counted: true,
        other_in_flight: 0,
    };
    // 10 senders known; our answer at 1005, in the roll call
    // ([1000, 1012)): 600 remain, of which the reserve keeps 20. The
    // rest is split evenly over [1012, 1059): 58 each, one every 0.81 s,
    // the first at a random moment within that spacing.
    s.counted_before = 9.0;
    s.elapsed = 1.0;
    s.observe(1005.0, answer(600));
    let gap = 47.0 / (580.0 / 10.0);
    let Advice::At(first) = s.advice(1005.0) else {
        panic!()
    };
    assert!((1012.0..1012.0 + gap).contains(&first), "{first}");
    // Then at that spacing; when the others send less than planned (an
    // SDK or a light host left its share), the rate grows.
    s.started(1030.0);
    s.observe(1030.1, answer(500));
    let Advice::At(next) = s.advice(1030.1) else {
        panic!()
    };
    assert!((next - 1030.0 - gap).abs() < 1e-6, "{next}");
    s.started(1031.0);
    s.observe(1031.1, answer(499));
    let Advice::At(after) = s.advice(1031.1) else {
        panic!()
    };
    assert!(after - 1031.0 < gap * 0.99, "{after}");
}

#[test]
fn at_the_window_end_a_stale_remaining_is_shared_not_spent() {
    // 10 senders at 3 requests a second each; our answer, half a second
    // before the window's certain end, left 5 (3 above the reserve): an
    // even share of those is 0.3 of a request, less what the others send
    // meanwhile. Of 1,000 daemons in that spot, at most 300 send again
    // (pacing alone sent every one of them).
    let mut planned = 0;
    for seed in 0..1000 {
        let mut s = Share::new(100, Duration::from_secs(5), seed);
        s.counted_before = 9.0;
        s.elapsed = 1.0;
        s.window = Some(Window {
            reset: 1005,
            limit: 100,
            ours: 9,
            remaining: 5,
            others: 86,
            limited: false,
        });
        s.rate = Some(3.0);
        s.fleet_rate = Some(30.0);
        s.last_start = 1003.4;
        let (at, gap) = s.rest_of_window(1003.5, 1000.0);
        assert_eq!(gap, None, "no pacing on a fraction of a request");
        planned += usize::from(at.is_some());
    }
    assert!(planned <= 300, "{planned}");
    assert!(planned > 0, "the fraction is still taken by chance");
}
