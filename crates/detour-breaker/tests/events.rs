//! Every transition is a `tracing` event and moves the metrics, as an
//! operator's dashboards and logs would see them.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detour_breaker::{BreakerConfig, BreakerRegistry, CircuitBreaker};
use detour_core::{AdmissionGate, Backend, GateState, RemovalCap};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};

/// Metric values by `name{label=value,...}`.
#[derive(Default)]
struct Values(Mutex<BTreeMap<String, f64>>);

struct Handle {
    values: Arc<Values>,
    key: String,
}

impl Handle {
    fn update(&self, f: impl FnOnce(f64) -> f64) {
        let mut v = self.values.0.lock().unwrap();
        let e = v.entry(self.key.clone()).or_default();
        *e = f(*e);
    }
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.update(|v| v + value as f64);
    }
    fn absolute(&self, value: u64) {
        self.update(|_| value as f64);
    }
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        self.update(|v| v + value);
    }
    fn decrement(&self, value: f64) {
        self.update(|v| v - value);
    }
    fn set(&self, value: f64) {
        self.update(|_| value);
    }
}

#[derive(Default, Clone)]
struct TestRecorder(Arc<Values>);

impl TestRecorder {
    fn handle(&self, key: &Key) -> Arc<Handle> {
        let labels: Vec<_> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        Arc::new(Handle {
            values: Arc::clone(&self.0),
            key: format!("{}{{{}}}", key.name(), labels.join(",")),
        })
    }

    fn get(&self, key: &str) -> f64 {
        self.0 .0.lock().unwrap().get(key).copied().unwrap_or(0.0)
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// The messages and `reason` fields of the events seen.
#[derive(Default, Clone)]
struct Events(Arc<Mutex<Vec<(tracing::Level, String, String)>>>);

struct Fields {
    message: String,
    reason: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "reason" {
            self.reason = value.to_string();
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

impl Subscriber for Events {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut f = Fields {
            message: String::new(),
            reason: String::new(),
        };
        event.record(&mut f);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), f.message, f.reason));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[tokio::test(start_paused = true)]
async fn transitions_log_and_count() {
    let rec = TestRecorder::default();
    let events = Events::default();
    let _log = tracing::subscriber::set_default(events.clone());
    let mut cfg = BreakerConfig::default();
    cfg.half_open_successes = 1;
    let b = CircuitBreaker::new(cfg).unwrap();
    metrics::with_local_recorder(&rec, || {
        for _ in 0..5 {
            b.record_failure(Duration::ZERO);
        }
    });
    assert_eq!(rec.get("detour_breaker_transitions_total{to=open}"), 1.0);
    assert_eq!(rec.get("detour_breakers_open{}"), 1.0);
    tokio::time::advance(Duration::from_secs(30)).await;
    metrics::with_local_recorder(&rec, || {
        b.try_acquire().unwrap().success();
    });
    assert_eq!(
        rec.get("detour_breaker_transitions_total{to=half_open}"),
        1.0
    );
    assert_eq!(rec.get("detour_breaker_transitions_total{to=closed}"), 1.0);
    assert_eq!(rec.get("detour_breakers_open{}"), 0.0, "back in service");

    let seen = events.0.lock().unwrap().clone();
    let summary: Vec<_> = seen
        .iter()
        .map(|(l, m, r)| (*l, m.as_str(), r.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                tracing::Level::WARN,
                "circuit breaker opened",
                "consecutive_failures"
            ),
            (
                tracing::Level::INFO,
                "circuit breaker half-open: probing",
                "open_elapsed"
            ),
            (
                tracing::Level::INFO,
                "circuit breaker closed",
                "probes_succeeded"
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_trip_the_cap_refuses_is_counted_and_logged_once() {
    let rec = TestRecorder::default();
    let events = Events::default();
    let _log = tracing::subscriber::set_default(events.clone());
    let reg = BreakerRegistry::new(BreakerConfig::default())
        .unwrap()
        .with_upstream("app");
    let only = Arc::new(Backend::new("127.0.0.1:7".parse().unwrap()));
    // One backend: the cap never lets it go.
    let cap = Arc::new(RemovalCap::new(50));
    cap.attach(std::slice::from_ref(&only));
    let b = reg.attach(&only).unwrap();
    metrics::with_local_recorder(&rec, || {
        for _ in 0..8 {
            b.record_failure(Duration::ZERO);
        }
    });
    assert_eq!(b.state(), GateState::Closed);
    assert!(AdmissionGate::try_admit(&*b));
    assert_eq!(
        rec.get("detour_breaker_trips_refused_total{upstream=app}"),
        4.0
    );
    assert_eq!(
        rec.get("detour_breaker_transitions_total{to=open,upstream=app}"),
        0.0
    );
    // Once the cap has room (a second backend joins), the next failure trips.
    let other = Arc::new(Backend::new("127.0.0.1:8".parse().unwrap()));
    cap.attach(&[Arc::clone(&only), other]);
    metrics::with_local_recorder(&rec, || b.record_failure(Duration::ZERO));
    assert_eq!(b.state(), GateState::Open);
    assert_eq!(
        rec.get("detour_breaker_transitions_total{to=open,upstream=app}"),
        1.0
    );
    let seen = events.0.lock().unwrap();
    assert_eq!(
        seen.len(),
        2,
        "the refusal logged once per streak, then the trip"
    );
    assert!(seen[0].1.contains("removal cap"), "{:?}", seen[0]);
    assert_eq!(seen[1].1, "circuit breaker opened");
}
