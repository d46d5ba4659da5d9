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

/// Starts `keygate serve` with `workers` workers, `cpu_affinity` and the `[proxy]`
/// lines `extra`; returns the process once all workers run (and, when `pinned`,
/// have pinned themselves) and its start-up line.
fn start(
    dir: &std::path::Path,
    workers: usize,
    affinity: &str,
    extra: &str,
    pinned: bool,
) -> (std::process::Child, String) {
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
    let (child, _) = common::serve_process(&file, "info", Arc::clone(&logs));
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
            return (child, line);
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
    let (child, line) = start(dir.path(), workers, affinity, "", pinned);
    let cpus = workers_cpus(child.id());
    common::terminate(child);
    (cpus, line.contains("\"pinned\":true"))
}

#[test]
fn workers_run_under_sched_batch_only_when_asked_and_nothing_else_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (child, line) = start(dir.path(), 2, "off", "sched_policy = \"batch\"\n", false);
    // A worker sets its policy first thing, but after the start-up line may be out.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut workers = policy_of(&child, true);
    while workers != [3, 3] && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        workers = policy_of(&child, true);
    }
    let others = policy_of(&child, false);
    common::terminate(child);
    assert_eq!(workers, [3, 3], "both workers under SCHED_BATCH");
    assert!(line.contains("\"batch\":true"), "{line}");
    assert!(
        !others.is_empty() && others.iter().all(|&p| p == 0),
        "the other threads stay ordinary: {others:?}"
    );

    let (child, line) = start(dir.path(), 2, "off", "", false);
    let workers = policy_of(&child, true);
    common::terminate(child);
    assert_eq!(workers, [0, 0], "ordinary workers by default");
    assert!(line.contains("\"batch\":false"), "{line}");
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
