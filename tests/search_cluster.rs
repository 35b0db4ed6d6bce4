//! A search sink with `urls = [a, b]` over a real two-node OpenSearch cluster keeps writing when
//! one node stops. The cluster is this test's own (scripts/search-node.sh in cluster mode, small
//! heaps); the suite's single node is only used to know the search tests are on.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use support::search::{assert_index_equals_table, http};
use support::{write_config, CdcProcess};

/// One node of the test's cluster, stopped when dropped.
struct Node {
    dir: PathBuf,
    url: String,
}

impl Node {
    fn start(dir: &Path, envs: &[(&str, String)]) -> Node {
        let out = Command::new("bash")
            .arg(support::repo_root().join("scripts/search-node.sh"))
            .arg("start")
            .arg(dir)
            .envs(envs.iter().map(|(k, v)| (k, v.as_str())))
            .env("CDC_SEARCH_HEAP", "256m")
            .output()
            .expect("running scripts/search-node.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "starting a cluster node in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let url = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export CDC_TEST_SEARCH_URL="))
            .expect("search-node.sh prints the node's URL")
            .to_string();
        Node {
            dir: dir.to_path_buf(),
            url,
        }
    }

    fn stop(&self) {
        let status = Command::new("bash")
            .arg(support::repo_root().join("scripts/search-node.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output()
            .expect("running scripts/search-node.sh stop");
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Not `stop`: no assertion while a failed test unwinds.
        let _ = Command::new("bash")
            .arg(support::repo_root().join("scripts/search-node.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

/// Waits until the cluster (asked through `node`) has `n` nodes and every shard of `index` (or
/// of the cluster) is assigned as far as `status` says.
async fn wait_health(node: &str, query: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (status, body) = http(
            reqwest::Method::GET,
            &format!("{node}/_cluster/health?{query}&timeout=5s"),
            None,
        )
        .await;
        if status == 200 && body["timed_out"] == false {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster never reached {what}: {status} {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_sink_over_two_nodes_keeps_writing_when_one_stops() {
    if support::search_url().is_none() {
        eprintln!("SKIPPED: the search tests are off (CDC_TEST_SEARCH_URL is not set)");
        return;
    }
    let root = support::temp_dir();
    let (a_dir, b_dir) = (root.path().join("node-a"), root.path().join("node-b"));
    let ports = (support::free_port(), support::free_port());
    for (dir, port) in [(&a_dir, ports.0), (&b_dir, ports.1)] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("transport.port"), port.to_string()).unwrap();
    }
    let cluster = support::unique_name("cdc-pair");
    let common = vec![
        ("CDC_SEARCH_CLUSTER", cluster),
        (
            "CDC_SEARCH_SEEDS",
            format!("127.0.0.1:{},127.0.0.1:{}", ports.0, ports.1),
        ),
        ("CDC_SEARCH_MANAGER", "node-a".to_string()),
    ];
    // a manages the cluster and holds data; b holds data only, so the cluster keeps its manager
    // when b stops (two manager-eligible nodes cannot lose either).
    let a = Node::start(&a_dir, &common);
    let mut b_env = common.clone();
    b_env.push(("CDC_SEARCH_ROLES", "data,ingest".to_string()));
    let b = Node::start(&b_dir, &b_env);
    wait_health(&a.url, "wait_for_nodes=2", "two nodes").await;

    let db = support::new_database("search_cluster").await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY, title text)").await;
    let dir = support::temp_dir();
    // One replica: every shard has a copy on each node, so the index stays whole without b.
    std::fs::write(
        dir.path().join("settings.json"),
        json!({"settings": {"number_of_shards": 2, "number_of_replicas": 1}}).to_string(),
    )
    .unwrap();
    let toml = format!(
        "[source]\nurl = \"{url}\"\nslot = \"{name}\"\npublication = \"{name}\"\n\n\
         [sinks.search]\ntype = \"elasticsearch\"\nurls = [\"{a}\", \"{b}\"]\nflush_interval = \"100ms\"\n\n\
         [[tables]]\ntable = \"items\"\nsinks = [\"search\"]\nindex = \"items\"\nsettings = \"settings.json\"\n",
        url = db.url,
        name = db.name,
        a = a.url,
        b = b.url,
    );
    let config = write_config(dir.path(), &toml).to_str().unwrap().to_string();
    let out = support::cdc(&["--config", &config, "setup"]);
    assert!(out.status.success(), "cdc setup: {}", support::stderr_of(&out));
    let mut cdc = CdcProcess::start(&["--config", &config, "run"], &[("RUST_LOG", "cdc=info")]);

    let expected = "SELECT id::text, jsonb_build_object('id', id, 'title', title)::text FROM items";
    for t in 0..20 {
        db.exec(&format!(
            "INSERT INTO items SELECT g, 'first ' || g FROM generate_series({}, {}) g",
            t * 50,
            t * 50 + 49
        ))
        .await;
    }
    assert_index_equals_table(&a.url, "items", &db, expected, Duration::from_secs(120)).await;
    wait_health(&a.url, "index=items&wait_for_status=green", "every replica assigned").await;

    // b stops: half of cdc's requests would go to it; the rest of the cluster takes them.
    b.stop();
    wait_health(&a.url, "wait_for_nodes=1", "one node").await;
    for t in 0..20 {
        db.exec(&format!("UPDATE items SET title = 'second' WHERE id % 20 = {t}"))
            .await;
        db.exec(&format!(
            "INSERT INTO items SELECT g, 'after ' || g FROM generate_series({}, {}) g",
            1000 + t * 50,
            1000 + t * 50 + 49
        ))
        .await;
    }
    db.exec("DELETE FROM items WHERE id % 7 = 0").await;
    assert_index_equals_table(&a.url, "items", &db, expected, Duration::from_secs(120)).await;
    assert!(cdc.is_running(), "cdc kept running:\n{}", cdc.stderr_text());
    assert_eq!(cdc.sigterm().code(), Some(0), "{}", cdc.stderr_text());
    db.drop_slots().await;
}
