//! The runtime with real plugins and no Redis: dispositions, effects, and every failure kind.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice::model::{Disposition, Effect, Event, FailureKind, Handler, KIND_STREAM_ENTRY, Outcome};
use sluice::runtime::{GuestContext, Limits, PluginHandler, Runtime};

fn handler(name: &str, config: &[(&str, &str)]) -> PluginHandler {
    let runtime = Runtime::new(None).unwrap();
    let plugin = runtime.load_file(name, &common::plugin(name)).unwrap();
    PluginHandler::new(
        plugin,
        GuestContext {
            job: "job".into(),
            plugin: name.into(),
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            limits: Limits {
                deadline: Duration::from_millis(100),
                memory_bytes: 16 << 20,
                ..Limits::default()
            },
            state: None,
        },
    )
}

fn event(id: &str, fields: &[(&str, &str)]) -> Event {
    Event {
        kind: KIND_STREAM_ENTRY,
        id: id.into(),
        source: "in".into(),
        fields: fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
        delivery_count: 1,
        job: Arc::from("job"),
    }
}

fn failure_kind(o: &Outcome) -> Option<FailureKind> {
    match o {
        Outcome::Failed(f) => Some(f.kind),
        _ => None,
    }
}

#[test]
fn echo_emits_to_the_configured_target_or_the_default() {
    let fields = [("a", "1"), ("b", "2")];
    let out = handler("echo", &[("target", "t")]).handle_batch(&[event("1-0", &fields)]);
    let expected_fields: Vec<(String, Vec<u8>)> =
        vec![("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())];
    assert_eq!(
        out,
        vec![Outcome::Handled {
            disposition: Disposition::Ack,
            effects: vec![Effect::Emit {
                stream: "t".into(),
                fields: expected_fields.clone(),
                max_len: None,
            }],
        }]
    );
    let out = handler("echo", &[]).handle_batch(&[event("1-0", &fields)]);
    assert_eq!(
        out,
        vec![Outcome::Handled {
            disposition: Disposition::Ack,
            effects: vec![Effect::Emit {
                stream: "in:out".into(),
                fields: expected_fields,
                max_len: None,
            }],
        }]
    );
}

#[test]
fn each_failure_is_classified_and_the_next_event_still_runs() {
    let mut h = handler("chaos", &[]);
    let actions = ["trap", "ok", "loop", "ok", "alloc", "ok", "error", "ok"];
    let events: Vec<Event> = actions
        .iter()
        .enumerate()
        .map(|(i, a)| event(&format!("{i}-0"), &[("action", a)]))
        .collect();
    let outcomes = h.handle_batch(&events);
    let kinds: Vec<Option<FailureKind>> = outcomes.iter().map(failure_kind).collect();
    assert_eq!(
        kinds,
        vec![
            Some(FailureKind::Trap),
            None,
            Some(FailureKind::Timeout),
            None,
            Some(FailureKind::Memory),
            None,
            Some(FailureKind::Error),
            None
        ],
        "{outcomes:#?}"
    );
    match &outcomes[4] {
        Outcome::Failed(f) => assert!(f.message.contains("memory cap of 16 MiB"), "{}", f.message),
        other => panic!("{other:?}"),
    }
    match &outcomes[2] {
        Outcome::Failed(f) => assert!(f.message.contains("deadline of 100 ms"), "{}", f.message),
        other => panic!("{other:?}"),
    }
    // A panic's message, which the guest prints to stderr, comes with the trap.
    match &outcomes[0] {
        Outcome::Failed(f) => assert!(
            f.message.contains("the plugin printed:")
                && f.message.contains("chaos trap on event 0-0"),
            "{}",
            f.message
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn dispositions_come_back_as_answered() {
    let mut h = handler("chaos", &[]);
    let out = h.handle_batch(&[
        event("1-0", &[("action", "skip")]),
        event("2-0", &[("action", "retry")]),
        event("3-0", &[("action", "dead-letter"), ("message", "poison")]),
    ]);
    let d: Vec<_> = out
        .into_iter()
        .map(|o| match o {
            Outcome::Handled { disposition, .. } => disposition,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        d,
        vec![
            Disposition::Skip,
            Disposition::Retry(None),
            Disposition::DeadLetter("poison".into())
        ]
    );
}

#[test]
fn init_failure_is_reported_when_preparing() {
    let mut h = handler("chaos", &[("init", "fail")]);
    let err = h.prepare().unwrap_err();
    assert_eq!(err.kind, FailureKind::Init);
    assert!(err.message.contains("init told to fail"), "{}", err.message);
    let mut h = handler("chaos", &[("init", "panic")]);
    let err = h.prepare().unwrap_err();
    assert!(
        err.message.contains("init told to panic by config"),
        "{}",
        err.message
    );
}

#[test]
fn emit_capped_and_the_clock_reach_the_plugin() {
    let mut h = handler("chaos", &[("target", "t")]);
    let out = h.handle_batch(&[event("1-0", &[("action", "emit"), ("max_len", "10")])]);
    match &out[0] {
        Outcome::Handled { effects, .. } => {
            assert!(
                matches!(
                    &effects[0],
                    Effect::Emit {
                        max_len: Some(10),
                        ..
                    }
                ),
                "{effects:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let out = h.handle_batch(&[event("2-0", &[("action", "now")])]);
    let Outcome::Handled { effects, .. } = &out[0] else {
        panic!("{out:?}")
    };
    let Effect::Emit { fields, .. } = &effects[0] else {
        panic!("{effects:?}")
    };
    let now: u64 = String::from_utf8_lossy(&fields[0].1).parse().unwrap();
    assert!(now >= before && now < before + 60_000, "{now} vs {before}");
}

#[test]
fn emitting_outside_the_allowed_streams_fails_the_event() {
    let runtime = Runtime::new(None).unwrap();
    let plugin = runtime
        .load_file("chaos", &common::plugin("chaos"))
        .unwrap();
    let mut h = PluginHandler::new(
        plugin,
        GuestContext {
            job: "job".into(),
            plugin: "chaos".into(),
            config: [("target".to_string(), "sluice:jobs".to_string())].into(),
            limits: Limits::default(),
            state: None,
        },
    );
    let out = h.handle_batch(&[event("1-0", &[("action", "emit")])]);
    assert!(
        matches!(&out[0], Outcome::Failed(f) if f.kind == FailureKind::Limit && f.message.contains("allowed streams")),
        "{out:?}"
    );
}

#[test]
fn what_a_guest_says_is_cut_to_the_limit() {
    let huge = "x".repeat(100_000);
    let out = handler("chaos", &[]).handle_batch(&[
        event("1-0", &[("action", "error"), ("message", &huge)]),
        event("2-0", &[("action", "dead-letter"), ("message", &huge)]),
    ]);
    let Outcome::Failed(failure) = &out[0] else {
        panic!("{:?}", out[0]);
    };
    assert!(failure.message.len() < 4200, "{}", failure.message.len());
    assert!(failure.message.ends_with("(cut: 100000 bytes)"));
    let Outcome::Handled {
        disposition: Disposition::DeadLetter(reason),
        ..
    } = &out[1]
    else {
        panic!("{:?}", out[1]);
    };
    assert!(reason.len() < 4200 && reason.ends_with("(cut: 100000 bytes)"));
}

#[test]
fn lanes_handle_a_batch_in_parallel_and_give_the_outcomes_in_order() {
    let mut h = handler("echo", &[("target", "t")]).with_concurrency(3);
    assert_eq!(h.concurrency(), 3);
    h.prepare().unwrap();
    let events: Vec<Event> = (0..10)
        .map(|i| event(&format!("{i}-0"), &[("n", &i.to_string())]))
        .collect();
    let out = h.handle_batch(&events);
    assert_eq!(out.len(), 10);
    for (i, o) in out.iter().enumerate() {
        let Outcome::Handled { effects, .. } = o else {
            panic!("{o:?}")
        };
        let [Effect::Emit { fields, .. }] = effects.as_slice() else {
            panic!("{effects:?}")
        };
        assert_eq!(fields, &vec![("n".to_string(), i.to_string().into_bytes())]);
    }
    // Fewer events than lanes: each gets one.
    assert_eq!(h.handle_batch(&events[..2]).len(), 2);
}

#[test]
fn a_plugin_that_reads_state_keeps_one_instance_whatever_the_concurrency() {
    // chaos imports job state: its events must see each other's writes, in order.
    assert_eq!(handler("chaos", &[]).with_concurrency(4).concurrency(), 1);
}
