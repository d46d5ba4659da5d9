//! `[proxy] private_fd_table`: each proxy worker on a file-descriptor table of its own
//! (on by default), read from the kernel's view of each thread
//! (`/proc/PID/task/TID/fd`); and a socket the rest of the process closes is not held
//! open by a worker's copy of the table.

mod common;

use std::collections::BTreeSet;
use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The sockets (`socket:[inode]`) in the descriptor table at `fd_dir`.
fn sockets(fd_dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(fd_dir)
        .expect("a descriptor table")
        .filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.starts_with("socket:"))
        .collect()
}

/// Starts `keygate serve` with two workers and `private_fd_table`, holds a connection
/// that made one request, and returns the sockets of the main thread's table, of each
/// worker's, and whether the start-up line said the tables were private.
fn serve(private: bool) -> (BTreeSet<String>, Vec<BTreeSet<String>>, bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("keygate.toml");
    std::fs::write(
        &file,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\nworkers = 2\n\
             private_fd_table = {private}\n[store]\nurl = \"sqlite://{}/keygate.db\"\n",
            dir.path().display()
        ),
    )
    .expect("write config");
    let logs = Arc::new(Mutex::new(String::new()));
    let (child, addr) = common::serve_process(&file, "info", Arc::clone(&logs));
    // A kept-alive client connection: its socket on keygate's side is a worker's.
    let mut client = std::net::TcpStream::connect(&addr).expect("connect");
    std::io::Write::write_all(
        &mut client,
        b"GET /v1/x HTTP/1.1\r\nHost: k\r\nContent-Length: 0\r\n\r\n",
    )
    .expect("send");
    let mut answer = [0u8; 12];
    client.read_exact(&mut answer).expect("an answer");
    assert_eq!(&answer, b"HTTP/1.1 404", "no route: refused");
    let pid = child.id();
    let main = sockets(std::path::Path::new(&format!("/proc/{pid}/fd")));
    let workers: Vec<BTreeSet<String>> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.starts_with("keygate-proxy"))
        })
        .map(|task| sockets(&task.path().join("fd")))
        .collect();
    let said = common::startup_line(&logs).contains("\"private_fd_tables\":true");
    drop(client);
    common::terminate(child);
    (main, workers, said)
}

#[test]
fn each_worker_has_a_table_of_its_own_unless_turned_off() {
    let (main, workers, said) = serve(true);
    assert_eq!(workers.len(), 2);
    assert!(said, "the start-up line says the tables are private");
    for table in &workers {
        // Its listener at least, which no other table holds.
        assert!(
            !table.is_subset(&main),
            "a worker's sockets are its own: {table:?} vs the process's {main:?}"
        );
    }
    let inherited: Vec<_> = workers[0].intersection(&workers[1]).collect();
    // Tokio's signal socket, duplicated for each runtime, is the one kind kept.
    assert!(
        inherited.iter().all(|s| main.contains(*s)),
        "the workers share only what the process holds: {inherited:?}"
    );

    let (main, workers, said) = serve(false);
    assert!(!said);
    assert!(
        workers.iter().all(|table| table == &main),
        "off: one table for every thread: {workers:?} vs {main:?}"
    );
}

#[tokio::test]
async fn a_socket_the_process_closes_is_not_held_open_by_a_worker() {
    // A connected pair that exists before keygate's workers make their copies.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    let app = common::TestApp::start().await;
    let (key, _) = app.acme_key(&["read"]).await;
    assert_eq!(app.get("/v1/orgs/acme/items/1", &key).await.status(), 200);
    drop(client);
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    let read = tokio::task::spawn_blocking(move || server.read(&mut byte))
        .await
        .expect("join");
    assert_eq!(
        read.map_err(|e| e.kind()),
        Ok(0),
        "the peer sees the end of the stream, not a copy kept open by a worker"
    );
    app.stop().await;
}
