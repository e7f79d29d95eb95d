//! The deploy files are valid and agree with what the code does.

use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

fn file(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&file(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

#[test]
fn kubernetes_manifests_are_valid_yaml_with_the_probes_wired() {
    for f in [
        "configmap.yaml",
        "secret.yaml",
        "deployment.yaml",
        "service.yaml",
        "pdb.yaml",
        "kustomization.yaml",
        "console-configmap.yaml",
        "console-deployment.yaml",
        "console-service.yaml",
        "console-grants-job.yaml",
        "networkpolicy.yaml",
    ] {
        let docs = yaml(&format!("deploy/k8s/{f}"));
        assert!(!docs.is_empty() && docs[0]["kind"].as_str().is_some(), "{f} has a kind");
        assert!(file("deploy/k8s/kustomization.yaml").contains(f) || f == "kustomization.yaml", "{f} is applied");
    }
    // Only the scraper reaches the ops port, only the ingress the console's proxy.
    let policies = yaml("deploy/k8s/networkpolicy.yaml");
    let worker =
        policies.iter().find(|p| p["metadata"]["name"].as_str() == Some("bouncer-worker")).expect("worker policy");
    assert_eq!(worker["spec"]["ingress"][0]["ports"][0]["port"].as_i64(), Some(9187));
    let d = &yaml("deploy/k8s/deployment.yaml")[0];
    assert_eq!(worker["spec"]["podSelector"], d["spec"]["selector"]);
    // Several replicas, rolled without a gap, never more than one away by choice.
    assert!(d["spec"]["replicas"].as_i64().is_some_and(|n| n >= 2));
    assert_eq!(d["spec"]["strategy"]["type"].as_str(), Some("RollingUpdate"));
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"].as_i64(), Some(0));
    let pdb = &yaml("deploy/k8s/pdb.yaml")[0];
    assert_eq!(pdb["spec"]["maxUnavailable"].as_i64(), Some(1));
    assert_eq!(pdb["spec"]["selector"], d["spec"]["selector"]);
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    let port = &c["ports"][0];
    assert_eq!(port["name"].as_str(), Some("metrics"));
    assert_eq!(port["containerPort"].as_i64(), Some(9187));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert_eq!(c["livenessProbe"]["httpGet"]["port"].as_str(), Some("metrics"));
    assert_eq!(c["readinessProbe"]["httpGet"]["port"].as_str(), Some("metrics"));
    // The config the pod runs with is a valid Bouncer config listening where the probes look.
    let cm = &yaml("deploy/k8s/configmap.yaml")[0];
    let toml = cm["data"]["bouncer.toml"].as_str().expect("bouncer.toml in the ConfigMap");
    let dir = std::env::temp_dir().join(format!("bouncer-k8s-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("zego"), "s").unwrap();
    std::fs::write(dir.join("trtc"), "k").unwrap();
    std::fs::write(dir.join("api"), "0123456789abcdef0123").unwrap();
    std::fs::write(dir.join("zego-callback"), "c").unwrap();
    std::fs::write(dir.join("trtc-callback"), "k2").unwrap();
    let local = toml
        .replace("/etc/bouncer/secrets/zego-callback-secret", dir.join("zego-callback").to_str().unwrap())
        .replace("/etc/bouncer/secrets/trtc-callback-key", dir.join("trtc-callback").to_str().unwrap())
        .replace("/etc/bouncer/secrets/zego-server-secret", dir.join("zego").to_str().unwrap())
        .replace("/etc/bouncer/secrets/trtc-secret-key", dir.join("trtc").to_str().unwrap())
        .replace("/etc/bouncer/secrets/api-token-token-server", dir.join("api").to_str().unwrap());
    let config = bouncer::config::Config::from_toml(&local).expect("the ConfigMap's config is valid");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(config.http.listen.port(), 9187);
    assert!(config.zego[0].callback_secret.is_some() && config.trtc[0].callback_key.is_some(), "callbacks verified");
    let svc = &yaml("deploy/k8s/service.yaml")[0];
    assert_eq!(svc["spec"]["ports"][0]["targetPort"].as_str(), Some("metrics"));
    // The public API listens where the pod and the bouncer-api Service say.
    assert_eq!(config.api.listen.map(|a| a.port()), Some(9192));
    assert_eq!(c["ports"][1]["containerPort"].as_i64(), Some(9192));
    let api = &yaml("deploy/k8s/service.yaml")[1];
    assert_eq!(api["spec"]["ports"][0]["targetPort"].as_str(), c["ports"][1]["name"].as_str());
}

#[test]
fn prometheus_alerts_parse_and_use_metrics_bouncer_exports() {
    let docs = yaml("deploy/prometheus/alerts.yml");
    let rules = docs[0]["groups"][0]["rules"].as_vec().expect("rules");
    let names: Vec<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    for want in [
        "BouncerConsumerDown",
        "BouncerIntakeStalled",
        "BouncerFailedVerdictsRising",
        "BouncerVendorConfigError",
        "BouncerBacklogOld",
        "BouncerVendorRulesFailing",
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    let exported = [
        "bouncer_consumer_active",
        "bouncer_verdicts_finished_total",
        "bouncer_vendor_config_errors_total",
        "bouncer_oldest_pending_verdict_seconds",
        "bouncer_intake_stalled_seconds",
        "bouncer_vendor_rule_calls_total",
    ];
    let src: String =
        ["src/http.rs", "src/audit/writer.rs", "src/call.rs", "src/rules.rs"].iter().map(|f| file(f)).collect();
    for m in exported {
        assert!(rules.iter().any(|r| r["expr"].as_str().unwrap_or_default().contains(m)), "an alert uses {m}");
        assert!(src.contains(&format!("\"{m}\"")), "{m} is exported by the code");
    }
}

#[test]
fn the_systemd_unit_raises_the_descriptor_limit() {
    let unit = file("deploy/systemd/bouncer.service");
    let limit: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .and_then(|v| v.trim().parse().ok())
        .expect("LimitNOFILE set");
    assert!(limit >= 4 * bouncer::http::MAX_CONNECTIONS as u64, "{limit}");
}

#[test]
fn rabbitmq_definitions_match_the_topology_the_worker_declares() {
    let defs: serde_json::Value = serde_json::from_str(&file("deploy/rabbitmq/definitions.json")).expect("JSON");
    let queue = |name: &str| {
        defs["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name}"))
    };
    let main = queue("bouncer.verdicts");
    let defaults = bouncer::config::Config::default().amqp;
    assert_eq!(main["arguments"]["x-queue-type"], "quorum");
    assert_eq!(main["arguments"]["x-delivery-limit"], defaults.delivery_limit);
    assert_eq!(main["arguments"]["x-dead-letter-exchange"], bouncer::intake::topology::dlx("bouncer.verdicts"));
    assert_eq!(queue("bouncer.verdicts.rejected")["arguments"]["x-queue-type"], "quorum");
    // The deferral queue of earlier versions is gone from the topology.
    let names: Vec<&str> = defs["queues"].as_array().unwrap().iter().filter_map(|q| q["name"].as_str()).collect();
    assert_eq!(names, ["bouncer.verdicts", "bouncer.verdicts.rejected"]);
}

#[test]
fn the_console_deploys_on_its_own_behind_its_proxy_with_its_own_database_role() {
    let d = &yaml("deploy/k8s/console-deployment.yaml")[0];
    assert_eq!(d["kind"].as_str(), Some("Deployment"));
    let containers = d["spec"]["template"]["spec"]["containers"].as_vec().expect("containers");
    let console = containers.iter().find(|c| c["name"].as_str() == Some("console")).expect("console container");
    assert_eq!(console["args"][0].as_str(), Some("web"));
    let env = console["env"].as_vec().expect("env");
    let url = env.iter().find(|e| e["name"].as_str() == Some("BOUNCER_POSTGRES__URL")).expect("database URL");
    assert_eq!(url["valueFrom"]["secretKeyRef"]["key"].as_str(), Some("console-postgres-url"), "its own role");
    assert!(file("deploy/k8s/secret.yaml").contains("console-postgres-url: \"postgres://bouncer_console:"));
    let svc = &yaml("deploy/k8s/console-service.yaml")[0];
    assert_eq!(svc["spec"]["selector"], d["spec"]["selector"]["matchLabels"]);
    let proxy = containers.iter().find(|c| c["name"].as_str() == Some("oauth2-proxy")).expect("proxy");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"].as_str(), proxy["ports"][0]["name"].as_str(), "through the proxy");

    // The console listens on loopback and believes the user header from the proxy beside it only.
    let cm = &yaml("deploy/k8s/console-configmap.yaml")[0];
    let toml = cm["data"]["console.toml"].as_str().expect("console.toml");
    let secret = std::env::temp_dir().join(format!("bouncer-csrf-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&secret, "k".repeat(32)).unwrap();
    let local = toml.replace("/etc/bouncer/secrets/console-csrf-secret", secret.to_str().unwrap());
    let config = bouncer::config::Config::from_toml(&local).expect("the console's config is valid");
    std::fs::remove_file(&secret).unwrap();
    assert!(config.web.listen.ip().is_loopback());
    assert_eq!(config.web.proxy_addresses, vec![std::net::IpAddr::from([127, 0, 0, 1])]);
    assert!(bouncer::web::refusal(&config.web).is_none());

    // The grants job gives the role the URL names what `bouncer migrate --grant-console` grants.
    let job = &yaml("deploy/k8s/console-grants-job.yaml")[0];
    let args: Vec<&str> = job["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_vec()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(args.first(), Some(&"migrate"));
    assert_eq!(args.iter().skip_while(|a| **a != "--grant-console").nth(1), Some(&"bouncer_console"));

    // The same in compose: a role made at first start, granted by migrate, used by the console.
    let compose = &yaml("deploy/docker-compose.yml")[0];
    let services = &compose["services"];
    assert!(file("deploy/postgres/console-role.sql").contains("CREATE ROLE bouncer_console LOGIN"));
    let grant: Vec<&str> =
        services["console-grants"]["command"].as_vec().expect("command").iter().filter_map(|a| a.as_str()).collect();
    assert_eq!(grant.iter().skip_while(|a| **a != "--grant-console").nth(1), Some(&"bouncer_console"));
    let console_url = services["console"]["environment"]["BOUNCER_POSTGRES__URL"].as_str().expect("console URL");
    assert!(console_url.starts_with("postgres://bouncer_console:"), "{console_url}");
    let env = [("CONSOLE_CSRF_SECRET".to_string(), "c".repeat(40))].into();
    let config = bouncer::config::Config::from_toml_with_env(&file("deploy/compose.console.toml"), &env)
        .expect("compose console config is valid");
    assert!(!config.web.listen.ip().is_loopback() && bouncer::web::refusal(&config.web).is_none(), "signs people in");
}

#[test]
fn compose_file_is_valid_yaml_and_docker_compose_accepts_it_where_installed() {
    let compose = &yaml("deploy/docker-compose.yml")[0];
    for svc in ["rabbitmq", "postgres", "sim", "bouncer", "console-grants", "console"] {
        assert!(!compose["services"][svc].is_badvalue(), "service {svc}");
    }
    let compose_toml = file("deploy/compose.bouncer.toml");
    let env =
        [("ZEGO_SERVER_SECRET".to_string(), "x".to_string()), ("TRTC_SECRET_KEY".to_string(), "y".to_string())].into();
    bouncer::config::Config::from_toml_with_env(&compose_toml, &env).expect("compose config is valid");
    let has_compose =
        std::process::Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success());
    if has_compose {
        let out = std::process::Command::new("docker")
            .args(["compose", "-f", concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/docker-compose.yml"), "config", "-q"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    } else {
        eprintln!("note: `docker compose` is not installed here; checked the compose file as YAML only");
    }
}

#[test]
fn the_dockerfile_copies_everything_the_workspace_build_reads() {
    let dockerfile = file("deploy/Dockerfile");
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let mut words: Vec<&str> = l.split_whitespace().collect();
            words.pop(); // the destination
            words
        })
        .collect();
    let manifest: toml::Table = toml::from_str(&file("Cargo.toml")).unwrap();
    let mut needed = vec!["Cargo.toml".to_string(), "Cargo.lock".to_string(), "src".to_string()];
    needed.extend(
        ["build.rs", "askama.toml", "migrations", "benches", "templates"]
            .into_iter()
            .filter(|p| Path::new(env!("CARGO_MANIFEST_DIR")).join(p).exists())
            .map(String::from),
    );
    // Workspace members and [patch] paths, by their first path component.
    let members = manifest["workspace"]["members"].as_array().unwrap().iter().filter_map(|m| m.as_str());
    let patches = manifest.get("patch").and_then(|p| p.get("crates-io")).and_then(|p| p.as_table());
    let patch_paths = patches.into_iter().flat_map(|t| t.values().filter_map(|v| v.get("path")?.as_str()));
    for path in members.chain(patch_paths).filter(|p| *p != ".") {
        needed.push(path.split('/').next().unwrap().to_string());
    }
    for path in needed {
        assert!(copied.contains(&path.as_str()), "deploy/Dockerfile does not COPY {path}: the image build needs it");
    }
    // The simulator the compose file runs from this image is `bouncer-tools`.
    assert!(dockerfile.contains("release/bouncer-tools"), "the image must ship bouncer-tools");
}
