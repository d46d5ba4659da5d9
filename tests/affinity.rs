//! `[proxy] cpu_affinity`: `keygate serve`'s workers pinned one per CPU when the
//! process may run on exactly as many CPUs as it has workers (`auto`, the default),
//! and left to the kernel otherwise or with `off`. Read from the kernel's view of
//! each thread (`/proc/PID/task/*/status`).

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

/// The allowed CPUs of each proxy worker thread of process `pid`.
fn workers_cpus(pid: u32) -> Vec<Vec<usize>> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.starts_with("keygate-proxy"))
        })
        .filter_map(|task| allowed_cpus(&task.path().join("status")))
        .collect()
}

/// Starts `keygate serve` with `workers` workers and `cpu_affinity`; returns each
/// worker's CPUs once all workers run (and, when `pinned`, have pinned themselves)
/// and whether the start-up line said they were pinned.
fn serve(workers: usize, affinity: &str, pinned: bool) -> (Vec<Vec<usize>>, bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("keygate.toml");
    std::fs::write(
        &file,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\nworkers = {workers}\n\
             cpu_affinity = \"{affinity}\"\n[store]\nurl = \"sqlite://{}/keygate.db\"\n",
            dir.path().display()
        ),
    )
    .expect("write config");
    let logs = Arc::new(Mutex::new(String::new()));
    let (child, _) = common::serve_process(&file, "info", Arc::clone(&logs));
    let deadline = Instant::now() + Duration::from_secs(10);
    let cpus = loop {
        let cpus = workers_cpus(child.id());
        if cpus.len() == workers && (!pinned || cpus.iter().all(|c| c.len() == 1)) {
            break cpus;
        }
        assert!(
            Instant::now() < deadline,
            "workers not up (pinned: {pinned}): {cpus:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let said = logs
        .lock()
        .expect("logs")
        .lines()
        .find(|l| l.contains("proxy listening"))
        .expect("the start-up line")
        .contains("\"pinned\":true");
    common::terminate(child);
    (cpus, said)
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
