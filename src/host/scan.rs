//! A `scan:PATH` job's walker on this host: ticks the job's passes, takes walk tasks (its
//! own, new ones, and those idle on dead hosts), looks at each directory on disk
//! ([`crate::scan`]) and commits what it found ([`crate::store::scan`]). Every host running
//! the job walks; the plugin's events are read by the job's runners like any stream's.

use std::time::{Duration, Instant};

use crate::model::{JobSpec, Source};
use crate::scan::{Looked, Walker};
use crate::store::scan::{self, FileFound, Found, Pass, ScanJob, StepFlags, Task};
use crate::store::{Conn, Keys, StoreError};

/// How often a walker ticks the passes (starts one when due, sees one end).
const TICK: Duration = Duration::from_secs(1);

/// Tasks taken per read (those waiting while one is looked at are kept fresh with it; see
/// [`fresh`]).
const READ: usize = 8;

/// The job's scan names and choices, if `spec` is a scan job.
pub fn scan_job(keys: &Keys, spec: &JobSpec, consumer: &str) -> Option<ScanJob> {
    match spec.source() {
        Ok(Source::Scan(root)) => Some(ScanJob::new(keys, &spec.name, root, consumer)),
        _ => None,
    }
}

/// The time between passes (zero: one pass per run).
pub fn interval(spec: &JobSpec) -> Duration {
    Duration::from_secs(spec.scan.interval_s)
}

/// Tick the passes once, logging what happened.
pub async fn tick(conn: &mut Conn, scan: &ScanJob, spec: &JobSpec, run: u64) {
    match scan::tick(conn, scan, interval(spec), run).await {
        Ok(Pass::Started(n)) => {
            tracing::info!(job = %scan.job, root = %scan.root, pass = n, "scan pass started");
            crate::metrics::scan_pass(&scan.job, "started");
        }
        Ok(Pass::Ended(n)) => {
            tracing::info!(job = %scan.job, pass = n, "scan pass ended");
            crate::metrics::scan_pass(&scan.job, "ended");
        }
        Ok(Pass::Overdue(n)) => {
            tracing::warn!(job = %scan.job, pass = n, interval_s = spec.scan.interval_s, "scan pass still running when the next is due: the next starts when it ends");
            crate::metrics::scan_pass(&scan.job, "overdue");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(job = %scan.job, "ticking the scan's passes failed: {e}"),
    }
}

/// Walk for `spec` until aborted with the job: `conn` for the steps (shared), `read` a
/// connection of its own (it blocks waiting for tasks).
pub async fn keep_walking(mut conn: Conn, mut read: Conn, scan: ScanJob, spec: JobSpec, run: u64) {
    let walker = match Walker::new(&scan.root, &spec.scan) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(job = %scan.job, "the scan's excludes do not compile: {e}");
            return;
        }
    };
    let flags = StepFlags {
        ignore_cache: spec.scan.ignore_cache,
        initial_ingest: spec.scan.initial_ingest,
        dir_events: spec.scan.dir_events,
    };
    let idle = Duration::from_millis(spec.claim_idle_ms);
    let backoff = || crate::model::backoff(Duration::from_millis(100), Duration::from_secs(5));
    let mut delays = backoff();
    let (mut ticked, mut claimed) = (Instant::now() - TICK, Instant::now());
    let mut failing = false;
    // Tasks this walker holds from a previous life, or could not finish: looked for at
    // the start and after a failure.
    let mut own = true;
    loop {
        if ticked.elapsed() >= TICK {
            tick(&mut conn, &scan, &spec, run).await;
            ticked = Instant::now();
        }
        let tasks = if claimed.elapsed() >= idle / 2 {
            claimed = Instant::now();
            scan::claim_idle(&mut read, &scan, idle, READ).await
        } else {
            scan::read_tasks(&mut read, &scan, READ, TICK, own).await
        };
        let result: Result<(), StoreError> = async {
            let tasks = tasks?;
            for (i, task) in tasks.iter().enumerate() {
                let held: Vec<String> = tasks[i..].iter().map(|t| t.id.clone()).collect();
                let found = fresh(&mut conn.clone(), &scan, &held, idle, look(&walker, task)).await;
                match scan::finish(&mut conn, &scan, task, &found, flags).await? {
                    Some(s) => crate::metrics::scan_files(&scan.job, s.changed, s.unchanged, s.deleted),
                    None => tracing::debug!(job = %scan.job, task = %task.id, "walk task taken over by another host"),
                }
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                own = false;
                if failing {
                    tracing::info!(job = %scan.job, "walking again");
                }
                failing = false;
                delays = backoff();
            }
            Err(e) => {
                own = true;
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                if !failing {
                    tracing::warn!(job = %scan.job, "walking failed, retrying in {delay:?}: {e}");
                }
                failing = true;
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Run `work`, keeping the tasks this walker holds (`held`) from looking abandoned
/// meanwhile (their idle time reset every third of `idle`), so a directory that takes long
/// to look at, and the tasks waiting behind it, are not taken over from a live walker.
async fn fresh<T>(
    conn: &mut Conn,
    scan: &ScanJob,
    held: &[String],
    idle: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    // The first tick a third of `idle` from now (an interval's immediate first tick would
    // wait for the timer wheel's next turn, up to a millisecond per task).
    let every = idle / 3;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                if let Err(e) = scan::refresh(conn, scan, held, idle / 4).await {
                    tracing::debug!(job = %scan.job, "refreshing a walk task failed: {e}");
                }
            }
        }
    }
}

/// Look at `task` on disk (off the async threads: it blocks on the filesystem).
async fn look(walker: &Walker, task: &Task) -> Found {
    let (walker, task) = (walker.clone(), task.clone());
    let job = tokio::task::spawn_blocking(move || found(&walker, &task));
    job.await.unwrap_or_else(|e| {
        tracing::error!("a walk task panicked: {e}");
        Found {
            unreadable_dir: true,
            unreadable: 1,
            ..Found::default()
        }
    })
}

fn found(walker: &Walker, task: &Task) -> Found {
    let file = |e: crate::scan::Entry| FileFound {
        signature: e.signature(),
        fields: e.fields(),
        name: e.name,
    };
    if let Some(names) = &task.names {
        let (files, unreadable) = walker.stat(&task.dir, names.clone());
        return Found {
            unreadable: unreadable.len() as u64,
            files: files.into_iter().map(file).collect(),
            ..Found::default()
        };
    }
    match walker.look(&task.dir, task.depth) {
        Looked::Gone => Found {
            gone: true,
            ..Found::default()
        },
        Looked::Unreadable(why) => {
            tracing::warn!(dir = %String::from_utf8_lossy(&task.dir), "a directory could not be read: {why}");
            Found {
                unreadable_dir: true,
                unreadable: 1,
                ..Found::default()
            }
        }
        Looked::Listed(l) => {
            let mut present = l.excluded.clone();
            present.extend(l.unreadable.iter().cloned());
            present.extend(l.batches.iter().flatten().cloned());
            Found {
                excluded: l.excluded.len() as u64,
                unreadable: l.unreadable.len() as u64,
                present,
                dirs: l.dirs,
                batches: l.batches,
                files: l.files.into_iter().map(file).collect(),
                ..Found::default()
            }
        }
    }
}
