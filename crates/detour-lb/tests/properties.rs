//! Property tests of selection: weighted fairness, consistent hashing's
//! minimal disruption, and that exclusion and health are always respected.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use detour_core::Backend;
use detour_lb::{
    Algorithm, Failover, Ketama, LbOptions, LeastRequest, LoadBalancer, Maglev, PeakEwma,
    RoundRobin, Selection, WeightedRandom,
};
use proptest::prelude::*;
use tokio::time::Instant;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 1, (i / 200) as u8, (i % 200) as u8 + 1], 8080))
}

fn algorithms() -> [Algorithm; 6] {
    [
        Algorithm::RoundRobin(RoundRobin),
        Algorithm::Random(WeightedRandom),
        Algorithm::LeastRequest(LeastRequest),
        Algorithm::PeakEwma(PeakEwma::default()),
        Algorithm::ConsistentHash(Ketama::default()),
        Algorithm::Maglev(Maglev::default()),
    ]
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Where each key goes with every candidate accepted.
fn placement<S: Selection>(lb: &LoadBalancer<S>, keys: u64) -> Vec<SocketAddr> {
    (0..keys)
        .map(|k| lb.select_with(k, |_| true).unwrap().addr())
        .collect()
}

/// The share of keys that moved when backend `gone` left a set of `n`.
fn moved_share<S: Selection + Clone>(s: S, n: usize, gone: usize) -> (f64, f64) {
    const KEYS: u64 = 20_000;
    let lb = LoadBalancer::new(s.clone());
    lb.update((0..n).map(|i| Backend::new(addr(i))));
    let before = placement(&lb, KEYS);
    lb.update((0..n).filter(|&i| i != gone).map(|i| Backend::new(addr(i))));
    let after = placement(&lb, KEYS);
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let moved_elsewhere = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a && **b != addr(gone))
        .count();
    (
        moved as f64 / KEYS as f64,
        moved_elsewhere as f64 / KEYS as f64,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn smooth_round_robin_gives_exact_weights_over_a_cycle(
        weights in prop::collection::vec(1u32..20, 1..12),
        offset in 0usize..50,
    ) {
        let lb = LoadBalancer::new(RoundRobin).with_seed(1);
        lb.update(weights.iter().enumerate().map(|(i, &w)| Backend::new(addr(i)).with_weight(w)));
        let g = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w)));
        let cycle: u64 = weights.iter().map(|&w| u64::from(w) / g).sum();
        // Any window of one cycle, wherever it starts.
        for _ in 0..offset {
            lb.select_with(0, |_| true);
        }
        let mut counts = vec![0u64; weights.len()];
        for _ in 0..cycle {
            let b = lb.select_with(0, |_| true).unwrap();
            counts[(0..weights.len()).position(|i| addr(i) == b.addr()).unwrap()] += 1;
        }
        for (c, w) in counts.iter().zip(&weights) {
            prop_assert_eq!(*c, u64::from(*w) / g, "{:?} {:?}", counts, weights);
        }
    }

    #[test]
    fn weighted_random_converges_to_the_weights(
        weights in prop::collection::vec(1u32..50, 2..10),
        seed in any::<u64>(),
    ) {
        const PICKS: usize = 20_000;
        let lb = LoadBalancer::new(WeightedRandom).with_seed(seed);
        lb.update(weights.iter().enumerate().map(|(i, &w)| Backend::new(addr(i)).with_weight(w)));
        let mut counts = vec![0f64; weights.len()];
        for _ in 0..PICKS {
            let b = lb.select_with(0, |_| true).unwrap();
            counts[(0..weights.len()).position(|i| addr(i) == b.addr()).unwrap()] += 1.0;
        }
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        for (c, w) in counts.iter().zip(&weights) {
            let p = f64::from(*w) / total;
            let sd = (PICKS as f64 * p * (1.0 - p)).sqrt();
            // Five standard deviations: a false alarm about once in 3.5 million.
            prop_assert!((c - PICKS as f64 * p).abs() <= 5.0 * sd + 1.0, "{:?} {:?}", counts, weights);
        }
    }

    #[test]
    fn ketama_moves_only_the_departed_backends_keys(n in 3usize..40, gone in any::<prop::sample::Index>()) {
        let gone = gone.index(n);
        let (moved, elsewhere) = moved_share(Ketama::default(), n, gone);
        let ideal = 1.0 / n as f64;
        prop_assert_eq!(elsewhere, 0.0, "a ring never moves other backends' keys");
        prop_assert!(moved > ideal * 0.55 && moved < ideal * 1.6, "moved {} of ideal {}", moved, ideal);
    }

    #[test]
    fn maglev_moves_about_one_nth_of_the_keys(n in 3usize..40, gone in any::<prop::sample::Index>()) {
        let gone = gone.index(n);
        let (moved, elsewhere) = moved_share(Maglev::default(), n, gone);
        let ideal = 1.0 / n as f64;
        prop_assert!(moved > ideal * 0.8 && moved < ideal * 1.5 + 0.01, "moved {} of ideal {}", moved, ideal);
        prop_assert!(elsewhere < 0.02 + ideal * 0.3, "disruption {}", elsewhere);
    }

    #[test]
    fn select_with_never_returns_an_excluded_backend_and_offers_each_once(
        n in 1usize..60,
        excluded in prop::collection::vec(any::<bool>(), 60),
        which in 0usize..6,
        key in any::<u64>(),
        seed in any::<u64>(),
    ) {
        let lb = LoadBalancer::new(algorithms()[which]).with_seed(seed);
        lb.update((0..n).map(|i| Backend::new(addr(i)).with_weight(1 + (i % 3) as u32)));
        let is_excluded = |a: SocketAddr| (0..n).any(|i| excluded[i] && addr(i) == a);
        let mut offered = Vec::new();
        let got = lb.select_with(key, |b| {
            offered.push(b.addr());
            !is_excluded(b.addr())
        });
        let mut unique = offered.clone();
        unique.sort();
        unique.dedup();
        prop_assert_eq!(unique.len(), offered.len(), "a candidate offered twice");
        prop_assert!(offered.len() <= n);
        match got {
            Some(b) => prop_assert!(!is_excluded(b.addr())),
            None => prop_assert!((0..n).all(|i| excluded[i]), "gave up with {:?} left", n - offered.len()),
        }
    }

    #[test]
    fn select_respects_health_and_tried_outside_panic_mode(
        states in prop::collection::vec(0u8..6, 1..30),
        tried_mask in prop::collection::vec(any::<bool>(), 30),
        which in 0usize..6,
        tiers in any::<bool>(),
        threshold in prop::sample::select(vec![0u8, 30, 50, 100]),
        key in any::<u64>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let options = LbOptions::default()
                .with_panic_threshold(threshold)
                .with_failover(if tiers { Failover::priority(1.4) } else { Failover::ActiveActive });
            let lb = LoadBalancer::try_new(algorithms()[which], options).unwrap().with_seed(key);
            let now = Instant::now();
            // 0, 1: healthy; 2: check failed; 3: ejected; 4: draining; 5: weight 0.
            lb.update(states.iter().enumerate().map(|(i, &s)| {
                Backend::new(addr(i)).with_weight(u32::from(s != 5)).with_priority((i % 2) as u32)
            }));
            let set: Vec<Arc<Backend>> = lb.backends().to_vec();
            for (i, &s) in states.iter().enumerate() {
                let b = set.iter().find(|b| b.addr() == addr(i)).unwrap();
                match s {
                    2 => b.state().set_check_failed(true),
                    3 => b.state().eject_until(now + std::time::Duration::from_secs(60)),
                    4 => b.state().set_draining(true),
                    _ => {}
                }
            }
            let tried: Vec<SocketAddr> = (0..states.len()).filter(|&i| tried_mask[i]).map(addr).collect();
            let state_of = |a: SocketAddr| states[(0..states.len()).position(|i| addr(i) == a).unwrap()];
            let healthy = |s: u8| s <= 1;
            let selectable = |s: u8| s <= 3; // panic mode: not draining, weight > 0
            let total = states.iter().filter(|&&s| s != 5).count();
            let available = states.iter().filter(|&&s| healthy(s)).count();
            let panic = threshold > 0 && available * 100 < usize::from(threshold) * total;
            let untried = |pred: &dyn Fn(u8) -> bool| {
                (0..states.len()).any(|i| pred(states[i]) && !tried.contains(&addr(i)))
            };

            let got = lb.select(key, &tried, now);
            let got = got.as_ref().map(|p| p.backend().addr());
            if !panic {
                match got {
                    Some(a) => {
                        prop_assert!(healthy(state_of(a)), "unhealthy {:?} outside panic", a);
                        if untried(&healthy) {
                            prop_assert!(!tried.contains(&a), "a tried one while others remain");
                        }
                    }
                    None => prop_assert!(available == 0, "none with {} available", available),
                }
            } else {
                match got {
                    Some(a) => {
                        prop_assert!(selectable(state_of(a)), "draining or weight 0 in panic");
                        if untried(&selectable) {
                            prop_assert!(!tried.contains(&a), "a tried one while others remain");
                        }
                    }
                    None => prop_assert!(!states.iter().any(|&s| selectable(s))),
                }
            }
            Ok(())
        })?;
    }
}
