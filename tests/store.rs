//! The store against a real redis-server, without a host: the commit script's fencing.

mod common;

use std::time::Duration;

use common::*;
use sluice::model::Decision;
use sluice::model::Start;
use sluice::model::{Disposition, Effect, Event, FailureKind, Outcome};
use sluice::store::stream::{self, StreamCommitter, StreamJob, StreamReader};
use sluice::store::{self, Keys};

async fn open(url: &str) -> (StreamReader, StreamCommitter) {
    let job = StreamJob::new(&Keys::new("sluice"), "j", "p", "in", "c1");
    let read = store::Endpoint::local(url)
        .unwrap()
        .connect(Duration::ZERO)
        .await
        .unwrap();
    let commit = store::Endpoint::local(url)
        .unwrap()
        .connect(Duration::ZERO)
        .await
        .unwrap();
    stream::open(read, commit, job, Start::Beginning)
        .await
        .unwrap()
}

fn acked(events: &[Event]) -> Vec<Outcome> {
    events
        .iter()
        .map(|e| Outcome::Handled {
            disposition: Disposition::Ack,
            effects: vec![Effect::Emit {
                stream: "out".into(),
                fields: e.fields.clone(),
                max_len: None,
            }],
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_run_twice_writes_and_counts_once() {
    let redis = RedisServer::start();
    let (mut reader, mut committer) = open(&redis.url).await;
    let mut conn = redis.conn();
    publish(&mut conn, "in", 3, &[("n", "{i}")]);
    let events = reader.read(10, 100).await.unwrap();
    assert_eq!(events.len(), 3);
    let outcomes = acked(&events);
    let decisions = vec![Decision::Ack; 3];
    let first = committer
        .commit(&events, &outcomes, &decisions, None, "v1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.acked, first.stale), (3, 0));
    // The same commit again, as after a lost reply: nothing written, nothing counted.
    let again = committer
        .commit(&events, &outcomes, &decisions, None, "v1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.acked, again.stale), (0, 3));
    assert_eq!(
        redis::cmd("XLEN")
            .arg("out")
            .query::<u64>(&mut conn)
            .unwrap(),
        3
    );
    assert_eq!(counter(&mut conn, "j", "in", "received"), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_commit_run_twice_schedules_and_counts_once() {
    let redis = RedisServer::start();
    let (mut reader, mut committer) = open(&redis.url).await;
    let mut conn = redis.conn();
    publish(&mut conn, "in", 1, &[("n", "0")]);
    let events = reader.read(10, 100).await.unwrap();
    let outcomes = vec![Outcome::failed(FailureKind::Error, "boom")];
    let decisions = vec![Decision::Retry {
        delay: Duration::from_secs(60),
        error: "error: boom".into(),
    }];
    let first = committer
        .commit(&events, &outcomes, &decisions, None, "v1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.retried, first.stale), (1, 0));
    let again = committer
        .commit(&events, &outcomes, &decisions, None, "v1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.retried, again.stale), (0, 1));
    assert_eq!(counter(&mut conn, "j", "in", "retried"), 1);
    assert_eq!(counter(&mut conn, "j", "in", "failed"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_for_an_older_delivery_is_stale() {
    let redis = RedisServer::start();
    let (mut reader, mut committer) = open(&redis.url).await;
    let mut conn = redis.conn();
    publish(&mut conn, "in", 1, &[("n", "0")]);
    let first_delivery = reader.read(10, 100).await.unwrap();
    // Another delivery of the same entry happens (a takeover claims it back to us).
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg("in")
        .arg("sluice:j")
        .arg("c1")
        .arg(0)
        .arg(&first_delivery[0].id)
        .query(&mut conn)
        .unwrap();
    let outcomes = acked(&first_delivery);
    let done = committer
        .commit(&first_delivery, &outcomes, &[Decision::Ack], None, "v1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (done.acked, done.stale),
        (0, 1),
        "the newer delivery commits, not this one"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_of_an_older_run_commits_nothing() {
    let redis = RedisServer::start();
    let mut job = StreamJob::new(&Keys::new("sluice"), "j", "p", "in", "c1");
    job.run = Some(1);
    let job_key = job.job_key.clone();
    let read = store::Endpoint::local(&redis.url)
        .unwrap()
        .connect(Duration::ZERO)
        .await
        .unwrap();
    let commit = store::Endpoint::local(&redis.url)
        .unwrap()
        .connect(Duration::ZERO)
        .await
        .unwrap();
    let (mut reader, mut committer) = stream::open(read, commit, job, Start::Beginning)
        .await
        .unwrap();
    let mut conn = redis.conn();
    let _: () = redis::cmd("HSET")
        .arg(&job_key)
        .arg("lifecycle_run")
        .arg(1)
        .query(&mut conn)
        .unwrap();
    publish(&mut conn, "in", 4, &[("n", "{i}")]);
    let events = reader.read(2, 100).await.unwrap();
    let decisions = vec![Decision::Ack; events.len()];
    let ours = committer
        .commit(&events, &acked(&events), &decisions, None, "v1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ours.acked, 2);
    // Another host began run 2: this runner's next commit writes and acks nothing.
    let _: () = redis::cmd("HSET")
        .arg(&job_key)
        .arg("lifecycle_run")
        .arg(2)
        .query(&mut conn)
        .unwrap();
    let events = reader.read(2, 100).await.unwrap();
    let refused = committer
        .commit(&events, &acked(&events), &decisions, None, "v1")
        .await
        .unwrap();
    assert_eq!(refused, Err(stream::Refused::Superseded));
    assert_eq!(field_values(&mut conn, "out", "n"), ["0", "1"]);
    assert_eq!(pending(&mut conn, "j", "in"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_whose_reads_changed_is_refused_whole() {
    use sluice::model::ReadSet;
    use sluice::store::stream::Refused;
    let redis = RedisServer::start();
    let (mut reader, mut committer) = open(&redis.url).await;
    let mut conn = redis.conn();
    publish(&mut conn, "in", 2, &[("n", "{i}")]);
    let events = reader.read(10, 100).await.unwrap();
    let outcomes = acked(&events);
    let decisions = vec![Decision::Ack; 2];
    // What the batch read: counter `c` at 5, kv `k` absent, window `w` without id `x`,
    // and no entry in `w` since 0.
    let mut reads = ReadSet::default();
    reads.counters.insert("c".into(), 5);
    reads.kv.insert("k".into(), None);
    reads.window_ids.insert(("w".into(), "x".into()), None);
    reads.window_counts.insert(("w".into(), 0), 0);
    let job = "sluice:{in}:job:j";
    let _: () = redis::cmd("SET")
        .arg(format!("{job}:counter:c"))
        .arg(5)
        .query(&mut conn)
        .unwrap();
    // Another host's write to each read in turn refuses the batch, naming the key.
    let writes: [(&str, Vec<&str>); 3] = [
        ("kv:k", vec!["SET", "v"]),
        ("counter:c", vec!["INCRBY", "1"]),
        ("window:w", vec!["ZADD", "1", "x"]),
    ];
    for (key, command) in writes {
        let full = format!("{job}:{key}");
        let mut cmd = redis::cmd(command[0]);
        cmd.arg(&full).arg(&command[1..]);
        let _: redis::Value = cmd.query(&mut conn).unwrap();
        let refused = committer
            .commit(&events, &outcomes, &decisions, Some(&reads), "v1")
            .await
            .unwrap();
        assert_eq!(refused, Err(Refused::Conflict { key: full.clone() }));
        assert_eq!(
            field_values(&mut conn, "out", "n").len(),
            0,
            "nothing written"
        );
        // Put the read value back for the next case.
        let _: () = redis::cmd("DEL").arg(&full).query(&mut conn).unwrap();
        if key == "counter:c" {
            let _: () = redis::cmd("SET")
                .arg(&full)
                .arg(5)
                .query(&mut conn)
                .unwrap();
        }
    }
    // Unchanged: it commits.
    let committed = committer
        .commit(&events, &outcomes, &decisions, Some(&reads), "v1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(committed.acked, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_counter_a_batch_would_overflow_refuses_it_before_any_write() {
    use sluice::store::stream::Refused;
    let redis = RedisServer::start();
    let (mut reader, mut committer) = open(&redis.url).await;
    let mut conn = redis.conn();
    publish(&mut conn, "in", 2, &[("n", "{i}")]);
    let events = reader.read(10, 100).await.unwrap();
    let counter = "sluice:{in}:job:j:counter:c";
    let _: () = redis::cmd("SET")
        .arg(counter)
        .arg(i64::MAX - 10)
        .query(&mut conn)
        .unwrap();
    // The first event emits (written first), the second pushes the counter past i64.
    let outcomes = vec![
        acked(&events[..1]).remove(0),
        Outcome::Handled {
            disposition: Disposition::Ack,
            effects: vec![Effect::CounterAdd {
                name: "c".into(),
                delta: 1000,
                ttl_s: None,
            }],
        },
    ];
    let refused = committer
        .commit(
            &events,
            &outcomes,
            &[Decision::Ack, Decision::Ack],
            None,
            "v1",
        )
        .await
        .unwrap();
    let Err(Refused::BadTarget(bad)) = refused else {
        panic!("{refused:?}");
    };
    assert_eq!(
        (bad.key.as_str(), bad.events.as_slice()),
        (counter, &[1][..])
    );
    assert!(bad.kind.contains("overflow"), "{}", bad.kind);
    assert_eq!(
        field_values(&mut conn, "out", "n").len(),
        0,
        "nothing written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lifecycle_runner_of_an_older_run_commits_nothing() {
    let redis = RedisServer::start();
    let keys = Keys::new("sluice");
    let mut job = StreamJob::lifecycle(&keys, "j", "p", "in", "c1");
    job.run = Some(1);
    let (stream, job_key) = (job.stream.clone(), job.job_key.clone());
    assert_eq!(job_key, keys.job("j", "in"), "fenced on the job's own hash");
    let read = store::Endpoint::local(&redis.url)
        .unwrap()
        .connect(Duration::ZERO)
        .await
        .unwrap();
    let commit = store::Endpoint::local(&redis.url)
        .unwrap()
        .connect(Duration::ZERO)
        .await
        .unwrap();
    let (mut reader, mut committer) = stream::open(read, commit, job, Start::Beginning)
        .await
        .unwrap();
    let mut conn = redis.conn();
    let set_run = |conn: &mut redis::Connection, run: u64| {
        let _: () = redis::cmd("HSET")
            .arg(&job_key)
            .arg("lifecycle_run")
            .arg(run)
            .query(conn)
            .unwrap();
    };
    // Run 1 is current: its lifecycle event commits.
    set_run(&mut conn, 1);
    publish(
        &mut conn,
        &stream,
        1,
        &[("kind", "job-started"), ("run", "1")],
    );
    let events = reader.read(1, 100).await.unwrap();
    let decisions = vec![Decision::Ack; events.len()];
    let done = committer
        .commit(&events, &acked(&events), &decisions, None, "v1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.acked, 1, "the current run's lifecycle commits");
    // Another host began run 2 and issued its job-started: this runner commits nothing.
    set_run(&mut conn, 2);
    publish(
        &mut conn,
        &stream,
        1,
        &[("kind", "job-started"), ("run", "2")],
    );
    let events = reader.read(1, 100).await.unwrap();
    assert_eq!(events.len(), 1);
    let refused = committer
        .commit(&events, &acked(&events), &decisions, None, "v1")
        .await
        .unwrap();
    assert_eq!(refused, Err(stream::Refused::Superseded));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_whose_ids_are_exhausted_refuses_the_batch_before_any_write() {
    use sluice::store::stream::Refused;
    let redis = RedisServer::start();
    let (mut reader, mut committer) = open(&redis.url).await;
    let mut conn = redis.conn();
    publish(&mut conn, "in", 2, &[("n", "{i}")]);
    let events = reader.read(10, 100).await.unwrap();
    let _: () = redis::cmd("XADD")
        .arg("full")
        .arg("18446744073709551615-18446744073709551615")
        .arg("f")
        .arg("v")
        .query(&mut conn)
        .unwrap();
    // The first event emits to `out` (written first), the second to the exhausted stream.
    let outcomes = vec![
        acked(&events[..1]).remove(0),
        Outcome::Handled {
            disposition: Disposition::Ack,
            effects: vec![Effect::Emit {
                stream: "full".into(),
                fields: vec![("n".into(), b"1".to_vec())],
                max_len: None,
            }],
        },
    ];
    let refused = committer
        .commit(
            &events,
            &outcomes,
            &[Decision::Ack, Decision::Ack],
            None,
            "v1",
        )
        .await
        .unwrap();
    let Err(Refused::BadTarget(bad)) = refused else {
        panic!("{refused:?}");
    };
    assert_eq!(
        (bad.key.as_str(), bad.events.as_slice()),
        ("full", &[1][..])
    );
    assert!(bad.kind.contains("exhausted"), "{}", bad.kind);
    assert_eq!(
        field_values(&mut conn, "out", "n").len(),
        0,
        "nothing written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_counter_is_followed_step_by_step_and_must_hold_an_integer() {
    use sluice::store::stream::Refused;
    let redis = RedisServer::start();
    let (mut reader, mut committer) = open(&redis.url).await;
    let mut conn = redis.conn();
    publish(&mut conn, "in", 3, &[("n", "{i}")]);
    let events = reader.read(10, 100).await.unwrap();
    let counter = "sluice:{in}:job:j:counter:c";
    let add = |delta: i64| Outcome::Handled {
        disposition: Disposition::Ack,
        effects: vec![Effect::CounterAdd {
            name: "c".into(),
            delta,
            ttl_s: None,
        }],
    };
    // Up by 1000, then down by 1000: the sum is 0, but the first INCRBY would overflow.
    let _: () = redis::cmd("SET")
        .arg(counter)
        .arg(i64::MAX - 10)
        .query(&mut conn)
        .unwrap();
    let outcomes = vec![acked(&events[..1]).remove(0), add(1000), add(-1000)];
    let decisions = [Decision::Ack, Decision::Ack, Decision::Ack];
    let refused = committer
        .commit(&events, &outcomes, &decisions, None, "v1")
        .await
        .unwrap();
    let Err(Refused::BadTarget(bad)) = refused else {
        panic!("{refused:?}");
    };
    assert!(bad.kind.contains("overflow"), "{}", bad.kind);
    assert_eq!(
        field_values(&mut conn, "out", "n").len(),
        0,
        "nothing written"
    );
    // A counter holding what Lua reads as a number but INCRBY does not.
    let _: () = redis::cmd("SET")
        .arg(counter)
        .arg("1e3")
        .query(&mut conn)
        .unwrap();
    let refused = committer
        .commit(&events, &outcomes, &decisions, None, "v1")
        .await
        .unwrap();
    let Err(Refused::BadTarget(bad)) = refused else {
        panic!("{refused:?}");
    };
    assert!(bad.kind.contains("non integer"), "{}", bad.kind);
    assert_eq!(
        field_values(&mut conn, "out", "n").len(),
        0,
        "nothing written"
    );
}

/// One retention pass on `stream` (a fresh lock each time: `every` is 1 ms).
async fn trim_once(
    conn: &mut sluice::store::Conn,
    stream: &str,
    groups: &[String],
) -> sluice::store::retention::Trim {
    tokio::time::sleep(Duration::from_millis(5)).await;
    sluice::store::retention::trim(
        conn,
        &Keys::new("sluice"),
        stream,
        "test",
        Some(Duration::from_millis(1)),
        Duration::ZERO,
        groups,
    )
    .await
    .unwrap()
}

/// A reconnecting async connection to `redis`, as the store uses.
async fn async_conn(redis: &RedisServer) -> sluice::store::Conn {
    store::Endpoint::local(&redis.url)
        .unwrap()
        .connect(Duration::ZERO)
        .await
        .unwrap()
}

#[tokio::test]
async fn retention_compares_ids_whole_however_long_their_sequence() {
    let redis = RedisServer::start();
    let mut sync = redis.conn();
    let mut conn = async_conn(&redis).await;
    // Sequences past 2^53, where a Lua number would round 9007199254740995 to ...996.
    for id in [
        "5-9007199254740990",
        "5-9007199254740995",
        "5-9007199254740996",
    ] {
        let _: String = redis::cmd("XADD")
            .arg("s")
            .arg(id)
            .arg("f")
            .arg("v")
            .query(&mut sync)
            .unwrap();
    }
    let cmd = |args: &[&str]| {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c
    };
    // Group g was delivered the first two and acknowledged only the first.
    let () = cmd(&["XGROUP", "CREATE", "s", "g", "0"])
        .query(&mut sync)
        .unwrap();
    let _: redis::Value = cmd(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "c",
        "COUNT",
        "2",
        "STREAMS",
        "s",
        ">",
    ])
    .query(&mut sync)
    .unwrap();
    let _: u64 = cmd(&["XACK", "s", "g", "5-9007199254740990"])
        .query(&mut sync)
        .unwrap();
    trim_once(&mut conn, "s", &[]).await;
    assert_eq!(
        stream_ids(&mut sync, "s"),
        ["5-9007199254740995", "5-9007199254740996"]
    );
    // A foreign group set right before the last entry still needs it.
    let () = cmd(&["XACK", "s", "g", "5-9007199254740995"])
        .query(&mut sync)
        .map(|_: u64| ())
        .unwrap();
    let () = cmd(&["XGROUP", "CREATE", "s", "other", "5-9007199254740995"])
        .query(&mut sync)
        .unwrap();
    trim_once(&mut conn, "s", &[]).await;
    assert_eq!(stream_ids(&mut sync, "s"), ["5-9007199254740996"]);
    // A registered job whose group does not exist yet: nothing goes.
    let _: redis::Value = cmd(&["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">"])
        .query(&mut sync)
        .unwrap();
    let _: u64 = cmd(&["XACK", "s", "g", "5-9007199254740996"])
        .query(&mut sync)
        .unwrap();
    let _: redis::Value = cmd(&["XREADGROUP", "GROUP", "other", "c", "STREAMS", "s", ">"])
        .query(&mut sync)
        .unwrap();
    let _: u64 = cmd(&["XACK", "s", "other", "5-9007199254740996"])
        .query(&mut sync)
        .unwrap();
    let waiting = trim_once(&mut conn, "s", &["sluice:new-job".to_string()]).await;
    assert!(
        matches!(&waiting, sluice::store::retention::Trim::Skipped(why) if why.contains("sluice:new-job")),
        "{waiting:?}"
    );
    assert_eq!(stream_ids(&mut sync, "s").len(), 1);
    // Everything acknowledged by every group: all of it goes, and a pass on the largest
    // id there is works too.
    trim_once(&mut conn, "s", &[]).await;
    assert!(stream_ids(&mut sync, "s").is_empty());
    let _: String = cmd(&[
        "XADD",
        "s",
        "18446744073709551615-18446744073709551615",
        "f",
        "v",
    ])
    .query(&mut sync)
    .unwrap();
    trim_once(&mut conn, "s", &[]).await;
    assert_eq!(stream_ids(&mut sync, "s").len(), 1, "undelivered: kept");
}

#[tokio::test]
async fn retention_keeps_the_entries_dead_letters_refer_to_until_they_are_purged() {
    let redis = RedisServer::start();
    let mut sync = redis.conn();
    let mut conn = async_conn(&redis).await;
    let keys = Keys::new("sluice");
    let ids = publish(&mut sync, "in", 3, &[("f", "v")]);
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("in")
        .arg("sluice:j")
        .arg("0")
        .query(&mut sync)
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("sluice:j")
        .arg("c")
        .arg("STREAMS")
        .arg("in")
        .arg(">")
        .query(&mut sync)
        .unwrap();
    let _: u64 = redis::cmd("XACK")
        .arg("in")
        .arg("sluice:j")
        .arg(&ids)
        .query(&mut sync)
        .unwrap();
    // A dead letter of the second entry that holds no copy (as commit.lua writes one for
    // an oversized entry), and its hold.
    let letter: String = redis::cmd("XADD")
        .arg(keys.dlq("j", "in"))
        .arg("*")
        .arg(&[
            "sluice:source-id",
            &ids[1],
            "sluice:source",
            "in",
            "sluice:deliveries",
            "1",
            "sluice:error",
            "too big",
            "sluice:plugin",
            "p",
            "sluice:dead-at",
            "0",
            "sluice:fields",
            "source",
        ])
        .query(&mut sync)
        .unwrap();
    let ms = ids[1].split('-').next().unwrap().to_string();
    let _: u64 = redis::cmd("ZADD")
        .arg(keys.held("in"))
        .arg(&ms)
        .arg(format!("sluice:j/{}", ids[1]))
        .query(&mut sync)
        .unwrap();
    trim_once(&mut conn, "in", &[]).await;
    let kept = stream_ids(&mut sync, "in");
    assert!(kept.contains(&ids[1]), "{kept:?}");
    // Purging the dead letter lets the entry go.
    let purged = sluice::store::dlq::purge(&mut conn, &keys, "j", "in", &[letter])
        .await
        .unwrap();
    assert_eq!(purged, 1);
    trim_once(&mut conn, "in", &[]).await;
    assert!(stream_ids(&mut sync, "in").is_empty());
}

#[tokio::test]
async fn a_forwarder_taking_over_writes_nothing_twice_and_keeps_the_order() {
    use sluice::store::forward::{Outbox, forward_once, outbox_entry};
    let redis = RedisServer::start();
    let mut conn = async_conn(&redis).await;
    let keys = Keys::new("sluice");
    let outbox_key = keys.outbox("j", "in");
    // Five emits of job j, aimed at `out` (on a cluster: another slot).
    let mut ids = Vec::new();
    for n in 0..5 {
        let emit = Effect::Emit {
            stream: "out".into(),
            fields: vec![("n".into(), n.to_string().into_bytes())],
            max_len: None,
        };
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&outbox_key).arg("*");
        for (k, v) in outbox_entry(&emit, "out", b"", 0).unwrap() {
            xadd.arg(k).arg(v);
        }
        ids.push(xadd.query_async::<String>(&mut conn).await.unwrap());
    }
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&outbox_key)
        .arg(keys.outbox_group())
        .arg("0")
        .query_async(&mut conn)
        .await
        .unwrap();
    // A forwarder read all five, wrote the first three to the target, and died before
    // acknowledging anything.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(keys.outbox_group())
        .arg("forwarder")
        .arg("STREAMS")
        .arg(&outbox_key)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut first = store::scripts::FORWARD.prepare_invoke();
    first
        .key("out")
        .key(keys.forwarded("out", "j", "in"))
        .arg(60_000);
    for (n, id) in ids.iter().take(3).enumerate() {
        first.arg(id).arg("x").arg(3).arg("").arg("n").arg(n);
    }
    let written: u64 = first.invoke_async(&mut conn).await.unwrap();
    assert_eq!(written, 3);
    // Another host takes over once the dead one's lock lapses (here: there is none).
    let outbox = Outbox {
        job: "j".into(),
        source: "in".into(),
        keys: keys.clone(),
        holder: "host-b".into(),
        wait_replicas: 0,
        wait_timeout_ms: 1000,
    };
    let read = forward_once(&mut conn, &outbox, 10).await.unwrap();
    assert_eq!(read, Some(5), "the entries read before are read again");
    let out: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("out")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ns: Vec<&str> = out.iter().map(|(_, f)| f[0].1.as_str()).collect();
    assert_eq!(ns, ["0", "1", "2", "3", "4"], "each once, in order");
    let left: u64 = redis::cmd("XLEN")
        .arg(&outbox_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "forwarded entries leave the outbox");
    // A host holding the lock keeps the others out.
    let other = Outbox {
        holder: "host-c".into(),
        ..outbox.clone()
    };
    assert_eq!(forward_once(&mut conn, &other, 10).await.unwrap(), None);
    // A forwarder that lost the lock while paused cannot read past its successor: the read
    // checks the lock in the same step.
    let read: redis::RedisResult<redis::Value> = store::scripts::OUTBOX_READ
        .key(&outbox_key)
        .key(keys.outbox_lock("j", "in"))
        .arg("host-c")
        .arg(keys.outbox_group())
        .arg(10)
        .arg(5000)
        .invoke_async(&mut conn)
        .await;
    let err = read.unwrap_err();
    assert_eq!(err.code(), Some("SLUICE_NOTHELD"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_feed_moves_items_in_order_and_stops_at_the_groups_max_lag() {
    use redis::Commands;
    use sluice::store::list::{Feed, Pulled, pull};
    let redis = RedisServer::start();
    let mut sync = redis.conn();
    let mut conn = store::Endpoint::local(&redis.url)
        .unwrap()
        .connect(Duration::ZERO)
        .await
        .unwrap();
    let keys = Keys::new("sluice");
    let stream = keys.list_stream("work");
    let feed = Feed {
        job: "j".into(),
        list: "work".into(),
        stream: stream.clone(),
        group: keys.group("j"),
        pop: sluice::model::ListEnd::Right,
        batch: 10,
        max_lag: 25,
    };
    // Nothing there: nothing moves.
    assert_eq!(pull(&mut conn, &feed).await.unwrap(), Pulled::Moved(0));
    let _: () = sync.lpush("work", (0..100).collect::<Vec<_>>()).unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(keys.group("j"))
        .arg("0")
        .arg("MKSTREAM")
        .query(&mut sync)
        .unwrap();
    // Three batches go (lag 30), then the group is full.
    for _ in 0..3 {
        assert_eq!(pull(&mut conn, &feed).await.unwrap(), Pulled::Moved(10));
    }
    assert_eq!(pull(&mut conn, &feed).await.unwrap(), Pulled::Full);
    assert_eq!(sync.llen::<_, usize>("work").unwrap(), 70);
    // The group reads them: room again.
    let read = |sync: &mut redis::Connection, n: usize| {
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("sluice:j")
            .arg("c")
            .arg("COUNT")
            .arg(n)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query(sync)
            .unwrap();
    };
    read(&mut sync, 30);
    assert_eq!(pull(&mut conn, &feed).await.unwrap(), Pulled::Moved(10));
    // An undelivered entry deleted: Redis cannot tell the lag; the feed waits until the
    // group has read up to the last entry.
    let ids = stream_ids(&mut sync, &stream);
    let _: () = sync.xdel(&stream, &[&ids[ids.len() - 1]]).unwrap();
    assert_eq!(pull(&mut conn, &feed).await.unwrap(), Pulled::Full);
    read(&mut sync, 100);
    assert_eq!(pull(&mut conn, &feed).await.unwrap(), Pulled::Moved(10));
    // The oldest item first, each once.
    let moved: Vec<String> = field_values(&mut sync, &stream, "payload");
    let mut want: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    want.remove(39);
    assert_eq!(moved, want);
    // Read by the job, each is a `list-item` from the list, its one field the item.
    let job = StreamJob {
        entries: stream::Entries::Fed,
        ..StreamJob::new(&keys, "k", "p", &stream, "c1")
    };
    let endpoint = store::Endpoint::local(&redis.url).unwrap();
    let (read, commit) = (
        endpoint.connect(Duration::ZERO).await.unwrap(),
        endpoint.connect(Duration::ZERO).await.unwrap(),
    );
    let (mut reader, _) = stream::open(read, commit, job, Start::Beginning)
        .await
        .unwrap();
    let events = reader.read(2, 100).await.unwrap();
    assert_eq!(events[0].kind, "list-item");
    assert_eq!(events[0].source, "work");
    assert_eq!(events[0].fields, [("payload".to_string(), b"0".to_vec())]);
    // An entry no feed wrote is shown whole, as an entry of the stream.
    let _: () = sync.xadd(&stream, "*", &[("a", "b")]).unwrap();
    let _: () = sync
        .xadd(
            &stream,
            "*",
            &[("sluice:kind", "job-finished"), ("sluice:source", "x")],
        )
        .unwrap();
    let events = reader.read(100, 100).await.unwrap();
    let last = &events[events.len() - 2..];
    assert_eq!(
        (last[0].kind, last[0].source.as_str()),
        ("stream-entry", stream.as_str())
    );
    assert_eq!((last[1].kind, last[1].fields.len()), ("stream-entry", 2));
    // A key of another type: nothing moves, and it says what the key holds.
    let _: () = sync.del("work").unwrap();
    let _: () = sync.set("work", "x").unwrap();
    assert_eq!(
        pull(&mut conn, &feed).await.unwrap(),
        Pulled::NotAList("string".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_jobs_last_retention_pass_trims_whoever_holds_the_lock() {
    use sluice::store::retention::{Trim, trim};
    let redis = RedisServer::start();
    let mut sync = redis.conn();
    let mut conn = async_conn(&redis).await;
    publish(&mut sync, "s", 3, &[("n", "{i}")]);
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("s")
        .arg("g")
        .arg("$")
        .query(&mut sync)
        .unwrap();
    let keys = Keys::new("sluice");
    // Another host trimmed a moment ago and holds the lock for a minute.
    let _: () = redis::cmd("SET")
        .arg(keys.retention_lock("s"))
        .arg("other")
        .arg("PX")
        .arg(60_000)
        .query(&mut sync)
        .unwrap();
    let every = Some(Duration::from_secs(60));
    let held = trim(&mut conn, &keys, "s", "me", every, Duration::ZERO, &[]).await;
    assert!(matches!(held.unwrap(), Trim::Locked { holder } if holder == "other"));
    let last = trim(&mut conn, &keys, "s", "me", None, Duration::ZERO, &[]).await;
    assert!(matches!(last.unwrap(), Trim::Trimmed { trimmed: 3, .. }));
}
