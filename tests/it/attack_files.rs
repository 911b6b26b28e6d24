//! Hostile review, files and start-up: a weak JWT secret, tokens outside their time or audience,
//! file transfers that hoard memory, permits or connections, deceptive file names, tokens in
//! `pgfeed tail`'s URL, and an embedded cluster readable by others or run as `nobody`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::auth::{in_an_hour, token, SECRET};
use crate::support::process::BIN;
use crate::support::{TestApp, TestDb, PATIENCE};

// ---- the JWT secret (README "Security: auth and limits") ----

/// `pgfeed ARGS` with a clean environment plus `env`, run to its exit: (success, stderr).
/// Panics if it starts serving instead of exiting.
async fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k == "DATABASE_URL" || k.starts_with("PGFEED_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let out = tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("pgfeed {args:?} with {env:?} started serving instead of refusing"))
        .expect("running pgfeed");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_refused_for_its_secret(run: (bool, String), bytes: usize) {
    let (ok, stderr) = run;
    assert!(!ok, "pgfeed started: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr:?}");
    assert!(
        stderr.contains("JWT secret") && stderr.contains(&format!("is {bytes} bytes")) && stderr.contains("32"),
        "{stderr:?}"
    );
}

#[tokio::test]
async fn an_empty_jwt_secret_is_refused_at_start_never_taken_for_no_auth() {
    // A reachable database: the old server started on it, with the empty string as its key.
    let db = TestDb::create().await;
    for bind in ["0.0.0.0:0", "127.0.0.1:0"] {
        let run = run_to_exit(
            &["serve", "--bind", bind],
            &[("DATABASE_URL", &db.url), ("PGFEED_JWT_SECRET", "")],
        )
        .await;
        assert_refused_for_its_secret(run, 0);
    }
}

#[tokio::test]
async fn a_jwt_secret_shorter_than_32_bytes_is_refused_at_start() {
    let db = TestDb::create().await;
    let short = "x".repeat(31);
    let run = run_to_exit(
        &["serve", "--bind", "0.0.0.0:0", "--jwt-secret", &short],
        &[("DATABASE_URL", &db.url)],
    )
    .await;
    assert_refused_for_its_secret(run, 31);
    let run = run_to_exit(
        &["serve", "--bind", "127.0.0.1:0"],
        &[("DATABASE_URL", &db.url), ("PGFEED_JWT_SECRET", "secret")],
    )
    .await;
    assert_refused_for_its_secret(run, 6);
}

// ---- token claims: nbf, aud, iss ----

#[tokio::test]
async fn a_token_that_is_not_valid_yet_is_refused() {
    let app = crate::auth::secured().await;
    let later = token(json!({"role": "admin", "exp": in_an_hour(), "nbf": in_an_hour() - 60}));
    app.request(Method::GET, "/api/studies", |r| r.bearer_auth(&later))
        .await
        .assert_error(401, "unauthorized");
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws?token={later}", app.addr)).await;
    assert!(refused.is_err(), "the WebSocket upgrade was accepted");

    let now = token(json!({"role": "admin", "exp": in_an_hour(), "nbf": in_an_hour() - 7200}));
    app.request(Method::GET, "/api/studies", |r| r.bearer_auth(&now))
        .await
        .ok(200);
}

#[tokio::test]
async fn with_an_audience_and_issuer_set_a_token_must_carry_both() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| {
        c.jwt_secret = Some(SECRET.into());
        c.jwt_audience = Some("pgfeed".into());
        c.jwt_issuer = Some("https://idp.example".into());
    })
    .await;
    let exp = in_an_hour();
    let refused = [
        json!({"role": "admin", "exp": exp}),
        json!({"role": "admin", "exp": exp, "iss": "https://idp.example"}),
        json!({"role": "admin", "exp": exp, "aud": "pgfeed"}),
        json!({"role": "admin", "exp": exp, "aud": "other-app", "iss": "https://idp.example"}),
        json!({"role": "admin", "exp": exp, "aud": "pgfeed", "iss": "https://evil.example"}),
    ];
    for claims in refused {
        let t = token(claims.clone());
        app.request(Method::GET, "/api/studies", |r| r.bearer_auth(&t))
            .await
            .assert_error(401, "unauthorized");
        let ws = tokio_tungstenite::connect_async(format!("ws://{}/ws?token={t}", app.addr)).await;
        assert!(ws.is_err(), "WebSocket accepted {claims}");
    }
    for aud in [json!("pgfeed"), json!(["other-app", "pgfeed"])] {
        let t = token(json!({"role": "admin", "exp": exp, "aud": aud, "iss": "https://idp.example"}));
        app.request(Method::GET, "/api/studies", |r| r.bearer_auth(&t))
            .await
            .ok(200);
    }
}

// ---- file names ----

#[tokio::test]
async fn bidi_controls_are_stripped_from_uploaded_and_downloaded_file_names() {
    let app = TestApp::spawn().await;
    app.rest_study("s1").await;
    // Shows as "invoiceexe.pdf" where bidi is honoured.
    let meta = app
        .upload(1, "invoice\u{202E}fdp.exe", "application/pdf", b"MZ".to_vec())
        .await
        .ok(201);
    assert_eq!(meta["name"], "invoicefdp.exe");
    let every = "a\u{202A}\u{202B}\u{202C}\u{202D}\u{202E}\u{2066}\u{2067}\u{2068}\u{2069}\u{200E}\u{200F}\u{061C}\u{2028}b.txt";
    let meta = app.upload(1, every, "text/plain", b"x".to_vec()).await.ok(201);
    assert_eq!(meta["name"], "ab.txt");
    assert_eq!(
        app.psql("select count(*) from files where name ~ '[\\u202A-\\u202E\\u2066-\\u2069]'"),
        "0"
    );

    // A name an outside writer stored as it liked is still cleaned in Content-Disposition.
    app.psql("insert into files (id, study_id, name, content_type, size_bytes, sha256) values (10, 1, E'bill\\u202Egpj.js', 'text/plain', 1, 'x')");
    app.psql("insert into file_contents (file_id, content) values (10, 'y')");
    let r = app.get("/api/files/10/content").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"billgpj.js\"; filename*=UTF-8''billgpj.js")
    );
}

// ---- streamed transfers ----

/// Deterministic bytes that do not compress.
fn noise(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// File `id` of study 1 with `len` bytes of content, written by psql (fast, and past --max-upload).
fn big_file(app: &TestApp, id: i64, len: usize) {
    app.psql(&format!(
        "insert into files (id, study_id, name, content_type, size_bytes, sha256) values ({id}, 1, 'big{id}', 'application/octet-stream', {len}, 'x');
         insert into file_contents (file_id, content) select {id}, convert_to(repeat('z', {len}), 'UTF8')"
    ));
}

/// A connection that asked for `path` and reads nothing more after the response head: a
/// receive buffer of a few KiB, so the server's writes stall once the socket buffers are full.
/// Answers it with the body bytes its first read took.
async fn stalled_download(app: &TestApp, path: &str) -> (TcpStream, usize) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(app.addr).await.expect("connect");
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 512];
    let n = tokio::time::timeout(PATIENCE, tcp.read(&mut head))
        .await
        .expect("no answer")
        .unwrap();
    let text = String::from_utf8_lossy(&head[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let end = head[..n]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the whole head in one read")
        + 4;
    (tcp, n - end)
}

/// Retries `GET path` until it is not refused `busy`; panics after `PATIENCE`.
async fn get_when_not_busy(app: &TestApp, path: &str) -> crate::support::rest::Reply {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let r = app.get(path).await;
            if r.status != 503 {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the transfer permit was never given back")
}

const BIG: usize = 12 << 20;

#[tokio::test]
async fn transfers_over_max_transfers_are_refused_busy_until_one_ends() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.max_transfers = 2).await;
    app.rest_study("s1").await;
    let small = app
        .upload(1, "small.txt", "text/plain", b"small".to_vec())
        .await
        .ok(201)["id"]
        .clone();
    big_file(&app, 100, BIG);

    // Two clients that ask for a big file and do not read it hold both transfers.
    let (first, _) = stalled_download(&app, "/api/files/100/content").await;
    let _second = stalled_download(&app, "/api/files/100/content").await;

    let r = app.get(&format!("/api/files/{small}/content")).await;
    r.assert_error(503, "busy");
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = app.upload(1, "more.txt", "text/plain", b"more".to_vec()).await;
    r.assert_error(503, "busy");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Metadata is no transfer.
    app.get(&format!("/api/files/{small}")).await.ok(200);

    // One client goes away: its permit comes back.
    drop(first);
    let r = get_when_not_busy(&app, &format!("/api/files/{small}/content")).await;
    assert_eq!((r.status.as_u16(), r.bytes.as_slice()), (200, b"small".as_slice()));
}

#[tokio::test]
async fn a_download_whose_client_stops_reading_is_cut_off_and_frees_its_transfer() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| {
        c.max_transfers = 1;
        c.transfer_stall_timeout = Duration::from_millis(300);
    })
    .await;
    app.rest_study("s1").await;
    big_file(&app, 1, BIG);
    app.psql("insert into files (id, study_id, name, content_type, size_bytes, sha256) values (2, 1, 's', 'text/plain', 1, 'x'); insert into file_contents values (2, 's')");

    let (mut slow, mut got) = stalled_download(&app, "/api/files/1/content").await;
    // The only transfer is the slow one, until the server gives up on it.
    let r = get_when_not_busy(&app, "/api/files/2/content").await;
    assert_eq!(r.status, 200);

    // What the slow client can still read is what was in flight: the server closed the
    // connection long before the file's end.
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await
    .expect("the stalled connection was left open");
    assert!(
        got < BIG,
        "the whole file arrived ({got} bytes): the slow reader was not cut off"
    );
}

#[tokio::test]
async fn a_large_upload_streams_through_and_round_trips_byte_exact() {
    let app = TestApp::spawn().await;
    app.rest_study("s1").await;
    // Not a whole number of chunks, and more than a few of them.
    for (i, len) in [(1, (3 << 20) + 12_345), (2, 0), (3, 1)] {
        let bytes = noise(len);
        let sha = hex::encode(Sha256::digest(&bytes));
        let r = app.upload(1, "scan.bin", "application/x-scan", bytes.clone()).await;
        let meta = r.ok(201);
        assert_eq!(r.etag(), format!("\"{sha}\""));
        assert_eq!(
            (meta["size_bytes"].as_u64(), meta["sha256"].as_str()),
            (Some(len as u64), Some(sha.as_str()))
        );

        let r = app.get(&format!("/api/files/{i}/content")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some(len.to_string().as_str()));
        assert!(r.bytes == bytes, "download of {len} bytes differs from the upload");
        assert_eq!(
            app.psql(&format!(
                "select encode(sha256(content), 'hex') from file_contents where file_id = {i}"
            )),
            sha
        );
    }
    assert_eq!(
        app.psql("select count(*) from file_upload_chunks"),
        "0",
        "staged chunks are dropped"
    );
}

#[tokio::test]
async fn an_upload_over_the_limit_without_a_length_is_refused_and_leaves_nothing_staged() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.max_upload = 1 << 20).await;
    app.rest_study("s1").await;
    // Chunked, so no Content-Length tells the server in advance: it finds out as bytes arrive,
    // after it has staged some of them.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..12).map(|_| Ok(noise(256 << 10))).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let part = reqwest::multipart::Part::stream(body).file_name("huge.bin");
    let form = reqwest::multipart::Form::new().part("file", part);
    let url = app.url("/api/studies/1/files");
    match reqwest::Client::new().post(url).multipart(form).send().await {
        // The server may close the connection before the client has sent it all.
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    tokio::time::timeout(PATIENCE, async {
        while app.psql("select count(*) from file_upload_chunks") != "0" {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a refused upload's chunks were left staged");
    assert_eq!(app.psql("select count(*) from files"), "0");
}

// ---- pgfeed tail ----

#[tokio::test]
async fn tail_sends_its_token_in_a_header_never_in_the_url() {
    // A stand-in server that writes down the upgrade request, then refuses it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let recorder = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = sock
            .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        String::from_utf8_lossy(&head).into_owned()
    });
    let out = tokio::time::timeout(
        PATIENCE,
        crate::tail::command(&["studies", "--url", &url, "--token", "eyJ.secret-token.sig"]).output(),
    )
    .await
    .expect("tail did not exit")
    .unwrap();
    assert!(!out.status.success());
    let head = recorder.await.unwrap();
    let request_line = head.lines().next().unwrap_or_default();
    assert!(request_line.starts_with("GET /ws "), "{request_line}");
    assert!(!request_line.contains("token"), "token in the URL: {request_line}");
    assert!(
        !request_line.contains("secret-token"),
        "token in the URL: {request_line}"
    );
    assert!(
        head.lines().any(|l| l
            .to_ascii_lowercase()
            .starts_with("authorization: bearer eyj.secret-token.sig")),
        "{head}"
    );
}

#[tokio::test]
async fn tail_follows_a_secured_server_with_its_token_in_the_header() {
    let app = crate::auth::secured().await;
    let admin = token(json!({"role": "admin", "exp": in_an_hour()}));
    let mut child = crate::tail::command(&["studies", "--url", &app.url(""), "--token", &admin])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    // Subscribed once the server has it; insert until the event shows (a row before the
    // subscription is not printed).
    let line = tokio::time::timeout(PATIENCE, async {
        let mut n = 0;
        loop {
            n += 1;
            app.psql(&format!("insert into studies (label, title) values ('t{n}', 'T')"));
            if let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_millis(300), lines.next_line()).await {
                return line;
            }
        }
    })
    .await
    .expect("tail printed nothing");
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["type"], "study_created");
    let _ = child.kill().await;
}

// ---- embedded mode ----

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o777
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pgfeed-{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&dir).unwrap();
    dir
}

fn uid_of_process(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn embedded_data_dir_is_0700_its_log_0600_and_its_cluster_user_is_not_nobody() {
    // As an older version left it: a world-readable data dir and server log.
    let dir = tempdir("embedded-modes");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = dir.join("postgres.log");
    std::fs::write(&log, "old log lines\n").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();

    let cluster = pgfeed::embedded::Cluster::start(&dir).await.expect("embedded cluster");
    assert_eq!(mode(&dir), 0o700, "data dir");
    assert_eq!(mode(&log), 0o600, "server log");
    assert_eq!(mode(cluster.data_dir()), 0o700, "pgdata");
    let owner = std::fs::metadata(cluster.data_dir()).unwrap().uid();
    let postmaster = uid_of_process(cluster.pid().expect("pid"));
    assert_eq!(owner, postmaster);
    let nobody = nix::unistd::User::from_name("nobody").unwrap().map(|u| u.uid.as_raw());
    assert_ne!(Some(postmaster), nobody, "the cluster runs as nobody");
    if nix::unistd::geteuid().is_root() {
        assert_ne!(postmaster, 0);
        assert_eq!(std::fs::metadata(&dir).unwrap().uid(), postmaster, "data dir owner");
    }
    cluster.stop().await.unwrap();
    // A fresh log (no older one) is private from its creation on.
    std::fs::remove_file(&log).unwrap();
    let cluster = pgfeed::embedded::Cluster::start(&dir).await.expect("restart");
    assert_eq!(mode(&log), 0o600, "new server log");
    cluster.stop().await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn embedded_mode_as_root_refuses_a_data_dir_owned_by_nobody() {
    let Some(nobody) = nix::unistd::User::from_name("nobody").unwrap() else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        return; // Only root picks the cluster's user.
    }
    let dir = tempdir("embedded-nobody");
    let pgdata = dir.join("pgdata");
    std::fs::create_dir(&pgdata).unwrap();
    std::os::unix::fs::chown(&pgdata, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw())).unwrap();
    let err = match pgfeed::embedded::Cluster::start(&dir).await {
        Ok(_) => panic!("started a cluster as nobody"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("nobody") && err.contains("chown"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
