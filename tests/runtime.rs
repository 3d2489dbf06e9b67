//! The runtime with real plugins and no Redis: dispositions, effects, and every failure kind.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice::model::{Disposition, Effect, Event, FailureKind, Handler, KIND_STREAM_ENTRY, Outcome};
use sluice::runtime::{GuestContext, Limits, PluginHandler, Runtime};

fn handler(name: &str, config: &[(&str, &str)]) -> PluginHandler {
    handler_with(
        name,
        config,
        Limits {
            deadline: Duration::from_millis(100),
            memory_bytes: 16 << 20,
            ..Limits::default()
        },
    )
}

fn handler_with(name: &str, config: &[(&str, &str)], limits: Limits) -> PluginHandler {
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
            limits,
            state: None,
            read_dir: None,
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
        settle: None,
        duplicate: false,
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
    // One call per event, and whole batches in `handle-batch` calls: the same outcomes.
    for name in ["chaos", "chaos-batch"] {
        each_failure_is_classified(name);
    }
}

fn each_failure_is_classified(name: &str) {
    let mut h = handler(name, &[]);
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
    for name in ["chaos", "chaos-batch"] {
        dispositions_come_back(name);
    }
}

fn dispositions_come_back(name: &str) {
    let mut h = handler(name, &[]);
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
            read_dir: None,
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

fn emitted(o: &Outcome) -> Vec<String> {
    match o {
        Outcome::Handled { effects, .. } => effects
            .iter()
            .map(|e| match e {
                Effect::Emit { fields, .. } => fields
                    .iter()
                    .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
                    .collect::<Vec<_>>()
                    .join(","),
                other => format!("{other:?}"),
            })
            .collect(),
        Outcome::Failed(f) => vec![format!("failed: {:?}", f.kind)],
    }
}

#[test]
fn a_batch_call_gives_each_event_its_own_effects() {
    let mut h = handler("chaos-batch", &[("target", "t")]);
    assert!(h.batch_calls());
    let events = [
        event("1-0", &[("action", "emit"), ("x", "1")]),
        event("2-0", &[("action", "error")]),
        event("3-0", &[("action", "emit"), ("x", "3")]),
        event("4-0", &[("action", "dead-letter")]),
        event("5-0", &[("action", "emit"), ("x", "5")]),
    ];
    let out = h.handle_batch(&events);
    let got: Vec<Vec<String>> = out.iter().map(emitted).collect();
    assert_eq!(
        got,
        vec![
            vec!["action=emit,x=1".to_string()],
            vec!["failed: Error".to_string()],
            vec!["action=emit,x=3".to_string()],
            vec![],
            vec!["action=emit,x=5".to_string()],
        ]
    );
}

#[test]
fn each_event_of_a_batch_call_has_its_own_deadline() {
    // Five events of 60 ms each in one call: 300 ms, past one event's deadline of 100 ms.
    let mut h = handler("chaos-batch", &[]);
    let events: Vec<Event> = (0..5)
        .map(|i| event(&format!("{i}-0"), &[("action", "ok"), ("spin_ms", "60")]))
        .collect();
    let out = h.handle_batch(&events);
    assert_eq!(out.iter().filter_map(failure_kind).count(), 0, "{out:#?}");
    assert_eq!(out.len(), 5);
}

#[test]
fn a_plugin_misusing_finish_harms_only_its_own_events() {
    let events: Vec<Event> = (0..4)
        .map(|i| event(&format!("{i}-0"), &[("action", "ok")]))
        .collect();
    // Returning without finishing: each event fails in turn, and the batch still ends.
    let out = handler("chaos-batch", &[("batch", "no-finish")]).handle_batch(&events);
    assert_eq!(out.len(), 4);
    for o in &out {
        let Outcome::Failed(f) = o else {
            panic!("{o:?}")
        };
        assert_eq!(f.kind, FailureKind::Error);
        assert!(f.message.contains("without finishing"), "{}", f.message);
    }
    // Finishing twice: the extra results land on later events of its own batch, never past it.
    let out = handler("chaos-batch", &[("batch", "extra-finish")]).handle_batch(&events);
    assert_eq!(out.len(), 4, "{out:#?}");
    // `finish` outside `handle-batch` breaks a rule: the event fails.
    let mut single = handler("chaos-batch", &[]).without_batch_calls();
    let out = single.handle_batch(&[event("1-0", &[("action", "finish-in-handle")])]);
    match &out[..] {
        [Outcome::Failed(f)] => {
            assert_eq!(f.kind, FailureKind::Limit);
            assert!(f.message.contains("outside handle-batch"), "{}", f.message);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_batch_call_stops_when_the_batch_budget_is_spent() {
    let limits = Limits {
        max_batch_bytes: 20_000,
        ..Limits::default()
    };
    let mut h = handler_with("chaos-batch", &[("target", "t")], limits);
    assert!(h.batch_calls());
    let big = "x".repeat(4000);
    let events: Vec<Event> = (0..20)
        .map(|i| event(&format!("{i}-0"), &[("action", "emit"), ("x", &big)]))
        .collect();
    let out = h.handle_batch(&events);
    assert!(
        (2..20).contains(&out.len()),
        "{} outcomes for a budget of about five",
        out.len()
    );
    assert!(out.iter().all(|o| emitted(o).len() == 1), "{out:#?}");
}

#[test]
fn lanes_make_batch_calls_and_give_the_outcomes_in_order() {
    let mut h = handler("echo-batch", &[("target", "t")]).with_concurrency(3);
    assert!(h.batch_calls());
    let events: Vec<Event> = (0..50)
        .map(|i| event(&format!("{i}-0"), &[("n", &i.to_string())]))
        .collect();
    let out = h.handle_batch(&events);
    let got: Vec<Vec<String>> = out.iter().map(emitted).collect();
    let want: Vec<Vec<String>> = (0..50).map(|i| vec![format!("n={i}")]).collect();
    assert_eq!(got, want);
}

#[test]
fn a_call_failing_before_its_first_result_is_split_until_the_fault_is_found() {
    // The plugin takes 1 MiB per event of a call before it handles any (as a language
    // converting the whole batch at once does): 32 events do not fit in 16 MiB, 8 do. No
    // event is failed for what the batch as a whole did.
    let mut h = handler("chaos-batch", &[("batch", "hoard")]);
    let events: Vec<Event> = (0..32)
        .map(|i| event(&format!("{i}-0"), &[("action", "ok")]))
        .collect();
    let out = h.handle_batch(&events);
    assert_eq!(out.len(), 32);
    assert_eq!(out.iter().filter_map(failure_kind).count(), 0, "{out:#?}");
    // An event that fails alone still fails, and only it.
    let mut events = events;
    events[5] = event("5-0", &[("action", "trap")]);
    let out = h.handle_batch(&events);
    let kinds: Vec<Option<FailureKind>> = out.iter().map(failure_kind).collect();
    let mut want = vec![None; 32];
    want[5] = Some(FailureKind::Trap);
    assert_eq!(kinds, want);
}

#[test]
fn a_trap_after_the_host_said_stop_fails_no_event() {
    let limits = Limits {
        max_batch_bytes: 20_000,
        ..Limits::default()
    };
    let config = [("target", "t"), ("batch", "trap-after-stop")];
    let mut h = handler_with("chaos-batch", &config, limits);
    let big = "x".repeat(4000);
    let events: Vec<Event> = (0..20)
        .map(|i| event(&format!("{i}-0"), &[("action", "emit"), ("x", &big)]))
        .collect();
    let out = h.handle_batch(&events);
    assert!((2..20).contains(&out.len()), "{}", out.len());
    assert_eq!(out.iter().filter_map(failure_kind).count(), 0, "{out:#?}");
}
