//! TLS to Postgres: `sslmode` in the source URL for both connections (catalog and replication),
//! against a cluster of the test's own with a certificate signed by a CA made here (rcgen).

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use support::{stderr_of, stdout_of, write_config, CdcProcess, ExtraCluster};

struct Certs {
    _dir: support::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A CA, a server certificate it signed for localhost, and an unrelated CA.
fn certs() -> Certs {
    let dir = support::temp_dir();
    let ca = ca("cdc test CA");
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Certs {
        ca: write("ca.pem", ca.pem()),
        other_ca: write("other-ca.pem", self::ca("another CA").pem()),
        cert: write("server.crt", server.pem()),
        key: write("server.key", key.serialize_pem()),
        _dir: dir,
    }
}

fn tls_cluster(certs: &Certs) -> ExtraCluster {
    ExtraCluster::start(&[
        ("CDC_PG_SSL_CERT", certs.cert.to_str().unwrap()),
        ("CDC_PG_SSL_KEY", certs.key.to_str().unwrap()),
    ])
}

fn config(dir: &Path, cluster: &ExtraCluster, tls: &str) -> String {
    let url = format!("postgres://postgres@localhost:{}/postgres?{tls}", cluster.port);
    let toml = format!(
        "[source]\nurl = \"{url}\"\n\n[sinks.out]\ntype = \"stdout\"\n\n[[tables]]\ntable = \"items\"\nsinks = [\"out\"]\n"
    );
    write_config(dir, &toml).to_str().unwrap().to_string()
}

/// Waits until cdc has its two connections (walsender and catalog) and each one is encrypted
/// when `encrypted`, or none is.
async fn wait_for_cdc_connections(db: &tokio_postgres::Client, encrypted: bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = db
            .query_one(
                "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.application_name = 'cdc'",
                &[],
            )
            .await
            .unwrap();
        let (tls, all): (i64, i64) = (row.get(0), row.get(1));
        if all >= 2 && tls == if encrypted { all } else { 0 } {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{tls} of cdc's {all} connections use TLS (want encrypted: {encrypted})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn verify_full_streams_over_tls_on_both_connections() {
    let certs = certs();
    let cluster = tls_cluster(&certs);
    let db = support::connect(&cluster.url).await;
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        .await
        .unwrap();
    let dir = support::temp_dir();
    let tls = format!("sslmode=verify-full&sslrootcert={}", certs.ca.display());
    let path = config(dir.path(), &cluster, &tls);
    let setup = support::cdc(&["--config", &path, "setup"]);
    assert!(setup.status.success(), "{}", stderr_of(&setup));

    let mut cdc = CdcProcess::start(&["--config", &path, "run"], &[]);
    db.batch_execute("INSERT INTO items VALUES (1, 'over tls')")
        .await
        .unwrap();
    let events = cdc.next_events(1, Duration::from_secs(60));
    assert_eq!(events[0]["new"]["title"], "over tls");
    // Both of cdc's connections, the walsender's and the catalog's, are encrypted.
    wait_for_cdc_connections(&db, true).await;
    assert!(cdc.sigterm().success(), "{}", cdc.stderr_text());
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused_with_a_clear_message() {
    let certs = certs();
    let cluster = tls_cluster(&certs);
    let dir = support::temp_dir();
    let tls = format!("sslmode=verify-full&sslrootcert={}", certs.other_ca.display());
    let path = config(dir.path(), &cluster, &tls);

    let check = support::cdc(&["--config", &path, "check"]);
    let text = stdout_of(&check);
    assert_eq!(check.status.code(), Some(1), "{text}");
    assert!(text.contains("problem: ") && text.contains("sslrootcert"), "{text}");

    let run = support::cdc_with_env_timeout(&["--config", &path, "run"], &[], Duration::from_secs(60));
    let err = stderr_of(&run);
    assert!(!run.status.success(), "{err}");
    assert!(err.contains("certificate") && err.contains("sslrootcert"), "{err}");
    assert!(
        !err.contains("retrying in"),
        "a certificate does not verify by waiting: {err}"
    );
}

#[tokio::test]
async fn require_encrypts_without_a_ca_and_disable_does_not() {
    let certs = certs();
    let cluster = tls_cluster(&certs);
    let db = support::connect(&cluster.url).await;
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        .await
        .unwrap();
    // The server accepts both; only the URL decides.
    for (mode, encrypted) in [("require", true), ("disable", false)] {
        let dir = support::temp_dir();
        let path = config(dir.path(), &cluster, &format!("sslmode={mode}"));
        let setup = support::cdc(&["--config", &path, "setup"]);
        assert!(setup.status.success(), "{mode}: {}", stderr_of(&setup));
        let mut cdc = CdcProcess::start(&["--config", &path, "run"], &[]);
        wait_for_cdc_connections(&db, encrypted).await;
        assert!(cdc.sigterm().success(), "{mode}: {}", cdc.stderr_text());
    }
}
