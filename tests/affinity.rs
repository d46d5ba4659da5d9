//! `[proxy] cpu_affinity`: `keygate serve`'s workers pinned one per CPU when the
//! process may run on exactly as many CPUs as it has workers (`auto`, the default),
//! and left to the kernel otherwise or with `off`; `[proxy] sched_policy`: the
//! workers under `SCHED_BATCH` when asked, ordinary threads otherwise. Read from the
//! kernel's view of each thread (`/proc/PID/task/*/status` and `stat`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The CPUs in a `Cpus_allowed_list` value such as `0-3,6`.
fn cpu_list(list: &str) -> Vec<usize> {
    list.trim()
        .split(',')
        .flat_map(|part| {
            let (first, last) = part.split_once('-').unwrap_or((part, part));
            let first: usize = first.parse().expect("a CPU number");
            let last: usize = last.parse().expect("a CPU number");
            first..=last
        })
        .collect()
}

fn allowed_cpus(status_path: &std::path::Path) -> Option<Vec<usize>> {
    let status = std::fs::read_to_string(status_path).ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    Some(cpu_list(list))
}

/// `read` of each thread of process `pid` (given the thread's `/proc` folder): of its
/// proxy workers when `is_worker`, else of every other thread; threads `read` has
/// nothing for are left out.
fn threads<T>(pid: u32, is_worker: bool, read: impl Fn(&std::path::Path) -> Option<T>) -> Vec<T> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.starts_with("keygate-proxy") == is_worker)
        })
        .filter_map(|task| read(&task.path()))
        .collect()
}

/// The allowed CPUs of each proxy worker thread of process `pid`.
fn workers_cpus(pid: u32) -> Vec<Vec<usize>> {
    threads(pid, true, |task| allowed_cpus(&task.join("status")))
}

/// A thread's scheduling policy: field 41 of its `stat` (0 `SCHED_OTHER`,
/// 3 `SCHED_BATCH`), counted after the name, which may hold spaces.
fn policy(task: &std::path::Path) -> Option<u32> {
    let stat = std::fs::read_to_string(task.join("stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(41 - 3)?.parse().ok()
}

/// A `keygate serve` that [`start`] started.
struct Started {
    child: std::process::Child,
    /// Its start-up line.
    line: String,
    /// The address it listens on.
    addr: String,
    /// Its log lines so far, JSON at `info`.
    logs: Arc<Mutex<String>>,
}

/// Starts `keygate serve` with `workers` workers, `cpu_affinity` and the `[proxy]`
/// lines `extra`; returns once all workers run (and, when `pinned`, have pinned
/// themselves).
fn start(dir: &std::path::Path, workers: usize, affinity: &str, extra: &str, pinned: bool) -> Started {
    let file = dir.join("keygate.toml");
    std::fs::write(
        &file,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\nworkers = {workers}\n\
             cpu_affinity = \"{affinity}\"\n{extra}[store]\nurl = \"sqlite://{}/keygate.db\"\n",
            dir.display()
        ),
    )
    .expect("write config");
    let logs = Arc::new(Mutex::new(String::new()));
    let (child, addr) = common::serve_process(&file, "info", Arc::clone(&logs));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cpus = workers_cpus(child.id());
        let line = logs
            .lock()
            .expect("logs")
            .lines()
            .find(|l| l.contains("proxy listening"))
            .map(str::to_owned);
        if let Some(line) = line
            && cpus.len() == workers
            && (!pinned || cpus.iter().all(|c| c.len() == 1))
        {
            return Started {
                child,
                line,
                addr,
                logs,
            };
        }
        assert!(
            Instant::now() < deadline,
            "workers not up (pinned: {pinned}): {cpus:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`start`] without extra lines; returns each worker's CPUs and whether the
/// start-up line said they were pinned.
fn serve(workers: usize, affinity: &str, pinned: bool) -> (Vec<Vec<usize>>, bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let Started { child, line, .. } = start(dir.path(), workers, affinity, "", pinned);
    let cpus = workers_cpus(child.id());
    common::terminate(child);
    (cpus, line.contains("\"pinned\":true"))
}

#[test]
fn workers_run_under_sched_batch_only_when_asked_and_nothing_else_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Started { child, line, .. } = start(dir.path(), 2, "off", "sched_policy = \"batch\"\n", false);
    // A worker sets its policy first thing, but after the start-up line may be out.
    let workers = wait_for_policies(&child, &[3, 3]);
    let others = policy_of(&child, false);
    common::terminate(child);
    assert_eq!(workers, [3, 3], "both workers under SCHED_BATCH");
    assert!(line.contains("\"batch\":true"), "{line}");
    assert!(
        !others.is_empty() && others.iter().all(|&p| p == 0),
        "the other threads stay ordinary: {others:?}"
    );

    let Started { child, line, .. } = start(dir.path(), 2, "off", "", false);
    let workers = policy_of(&child, true);
    common::terminate(child);
    assert_eq!(workers, [0, 0], "ordinary workers by default");
    assert!(line.contains("\"batch\":false"), "{line}");
    assert!(line.contains("\"sched_policy\":\"normal\""), "{line}");

    // auto: under SCHED_BATCH from the start.
    let Started { child, line, .. } = start(dir.path(), 2, "off", "sched_policy = \"auto\"\n", false);
    let workers = wait_for_policies(&child, &[3, 3]);
    common::terminate(child);
    assert_eq!(workers, [3, 3], "auto workers start under SCHED_BATCH");
    assert!(line.contains("\"sched_policy\":\"auto\""), "{line}");
}

/// The workers' policies once they read `want`, or after 10 s as they are.
fn wait_for_policies(child: &std::process::Child, want: &[u32]) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut workers = policy_of(child, true);
    while workers != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        workers = policy_of(child, true);
    }
    workers
}

/// `sched_policy = "auto"`: a worker whose CPU a busy loop also runs on waits for
/// it under `SCHED_BATCH` at each wake-up; the guard sees the waits and puts the
/// worker back under ordinary scheduling, and says so.
#[test]
fn an_auto_worker_leaves_sched_batch_while_a_busy_loop_shares_its_cpu() {
    use std::io::{Read as _, Write as _};
    use std::sync::atomic::{AtomicBool, Ordering};
    let cpu = *core_affinity::get_core_ids()
        .expect("this process's CPUs")
        .first()
        .expect("a CPU");
    let dir = tempfile::tempdir().expect("temp dir");
    // Started from a thread that runs on `cpu` only, keygate may run there only:
    // one CPU, one worker, pinned to it.
    let Started {
        child, addr, logs, ..
    } = {
        let dir = dir.path().to_owned();
        std::thread::spawn(move || {
            assert!(core_affinity::set_for_current(cpu), "pin the starting thread");
            start(&dir, 1, "auto", "sched_policy = \"auto\"\n", true)
        })
        .join()
        .expect("start keygate on one CPU")
    };
    assert_eq!(
        wait_for_policies(&child, &[3]),
        [3],
        "auto starts under SCHED_BATCH"
    );

    let spin = Arc::new(AtomicBool::new(true));
    let busy = {
        let spin = Arc::clone(&spin);
        std::thread::spawn(move || {
            assert!(core_affinity::set_for_current(cpu), "pin the busy loop");
            let mut n = 0_u64;
            while spin.load(Ordering::Relaxed) {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        })
    };
    // Requests without a key, answered by keygate itself, wake the worker.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut workers = policy_of(&child, true);
    while workers != [0] && Instant::now() < deadline {
        let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
        stream
            .write_all(b"GET /v1/items HTTP/1.1\r\nHost: kg\r\nConnection: close\r\n\r\n")
            .expect("send");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("answer");
        assert!(
            answer.starts_with(b"HTTP/1.1 4"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        std::thread::sleep(Duration::from_millis(2));
        workers = policy_of(&child, true);
    }
    spin.store(false, Ordering::Relaxed);
    busy.join().expect("busy loop");
    // The line is logged before the change; it reaches `logs` through a pipe.
    let said = || {
        logs.lock()
            .expect("logs")
            .lines()
            .any(|l| l.contains("ordinary scheduling for a while") && l.contains("\"hold_s\":30"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !said() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    common::terminate(child);
    assert_eq!(workers, [0], "the worker left SCHED_BATCH next to the busy loop");
    assert!(said(), "{}", logs.lock().expect("logs"));
}

/// The scheduling policies of `child`'s proxy workers (`workers`) or other threads.
fn policy_of(child: &std::process::Child, workers: bool) -> Vec<u32> {
    threads(child.id(), workers, policy)
}

#[test]
fn workers_get_a_cpu_each_only_when_the_cpus_are_as_many_as_the_workers() {
    // The CPUs keygate reads (the affinity mask less offline CPUs), as it reads them.
    let mine: Vec<usize> = core_affinity::get_core_ids()
        .expect("this process's CPUs")
        .into_iter()
        .map(|core| core.id)
        .collect();
    let n = mine.len();
    // An unpinned worker keeps the mask it inherited, as the kernel shows it.
    let mask = allowed_cpus(std::path::Path::new("/proc/self/status")).expect("this process's mask");

    let (mut cpus, said) = serve(n, "auto", true);
    cpus.sort();
    let expected: Vec<Vec<usize>> = mine.iter().map(|&cpu| vec![cpu]).collect();
    assert_eq!(
        cpus, expected,
        "auto, {n} workers on {n} CPUs: one CPU each, all used"
    );
    assert!(said, "the start-up line says the workers are pinned");

    let (cpus, said) = serve(n, "off", false);
    assert!(
        cpus.iter().all(|c| c == &mask),
        "off: every CPU for every worker: {cpus:?}"
    );
    assert!(!said);

    let (cpus, said) = serve(n + 1, "auto", false);
    assert!(
        cpus.iter().all(|c| c == &mask),
        "auto, more workers than CPUs: {cpus:?}"
    );
    assert!(!said);
}
