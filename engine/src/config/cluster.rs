//! Cluster settings, with KRaft's names: the node's roles, the controller
//! quorum's voters, the CONTROLLER listener, rack and the broker session.
//!
//! A node given none of them is a quorum of one (its own voter, no
//! controller port): the single-node broker of earlier releases.

use std::net::{SocketAddr, ToSocketAddrs};

use super::{invalid, parse_positive, ConfigError};

/// `process.roles`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessRoles {
    pub broker: bool,
    pub controller: bool,
}

/// One entry of `controller.quorum.voters` (`id@host:port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voter {
    pub id: i32,
    pub host: String,
    pub port: u16,
}

impl Voter {
    /// Resolves the voter's address (a name such as `localhost` is allowed).
    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{} resolves to no address", self.host)))
    }
}

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub roles: ProcessRoles,
    /// Empty: this node alone is the quorum.
    pub voters: Vec<Voter>,
    /// `listeners`' CONTROLLER entry: where this node's controller accepts peers.
    pub controller_listen: Option<SocketAddr>,
    /// `cluster.id`: every node of a cluster must be given the same one (Kafka
    /// formats each node's storage with it). Without it, a multi-node
    /// cluster derives one from `controller.quorum.voters`.
    pub cluster_id: Option<String>,
    /// `broker.rack`.
    pub rack: Option<String>,
    /// `broker.session.timeout.ms`: a broker silent this long is fenced.
    pub broker_session_timeout_ms: u64,
    /// `broker.heartbeat.interval.ms`.
    pub broker_heartbeat_interval_ms: u64,
    /// `controller.quorum.election.timeout.ms`.
    pub election_timeout_ms: u64,
    /// `controller.quorum.request.timeout.ms`: how long a forwarded admin
    /// request or a proposal waits for the quorum before it fails.
    pub quorum_request_timeout_ms: u64,
    /// `offsets.topic.replication.factor`.
    pub offsets_topic_replication_factor: i16,
    /// `metadata.log.max.record.bytes.between.snapshots`.
    pub metadata_snapshot_interval_bytes: u64,
    /// `replica.lag.time.max.ms`: a follower not caught up for this long
    /// leaves the ISR.
    pub replica_lag_time_max_ms: u64,
    /// `replica.fetch.wait.max.ms`: a follower's fetch long-polls this long.
    pub replica_fetch_wait_max_ms: u64,
    /// `replica.fetch.max.bytes`: per partition and fetch.
    pub replica_fetch_max_bytes: usize,
    /// `replica.fetch.response.max.bytes`: per fetch.
    pub replica_fetch_response_max_bytes: usize,
    /// `replica.fetch.backoff.ms`: pause after a failed fetch.
    pub replica_fetch_backoff_ms: u64,
    /// `replica.socket.timeout.ms`: a follower's request to its leader fails
    /// after this (beyond its long-poll wait).
    pub replica_socket_timeout_ms: u64,
    /// `replica.high.watermark.checkpoint.interval.ms`.
    pub replica_high_watermark_checkpoint_interval_ms: u64,
    /// `auto.leader.rebalance.enable`: the controller moves leadership back
    /// to preferred replicas (the first of each partition's replicas).
    pub auto_leader_rebalance_enable: bool,
    /// `leader.imbalance.check.interval.seconds`, in ms.
    pub leader_imbalance_check_interval_ms: u64,
    /// `leader.imbalance.per.broker.percentage`: rebalance once a broker leads
    /// fewer than this share of the partitions it is preferred for.
    pub leader_imbalance_per_broker_percentage: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            roles: ProcessRoles {
                broker: true,
                controller: true,
            },
            voters: Vec::new(),
            controller_listen: None,
            cluster_id: None,
            rack: None,
            broker_session_timeout_ms: 9_000,
            broker_heartbeat_interval_ms: 2_000,
            election_timeout_ms: 1_000,
            quorum_request_timeout_ms: 2_000,
            // Kafka's default is 3, which a lone node cannot place; the
            // embedded defaults start a single node, so 1 here, and clusters
            // set 3 (scripts/cluster.sh does).
            offsets_topic_replication_factor: 1,
            metadata_snapshot_interval_bytes: 20 * 1024 * 1024,
            replica_lag_time_max_ms: 30_000,
            replica_fetch_wait_max_ms: 500,
            replica_fetch_max_bytes: 1024 * 1024,
            replica_fetch_response_max_bytes: 10 * 1024 * 1024,
            replica_fetch_backoff_ms: 1_000,
            replica_socket_timeout_ms: 30_000,
            replica_high_watermark_checkpoint_interval_ms: 5_000,
            auto_leader_rebalance_enable: true,
            leader_imbalance_check_interval_ms: 300_000,
            leader_imbalance_per_broker_percentage: 10,
        }
    }
}

impl ClusterConfig {
    /// Applies one cluster setting; false when `key` is not one.
    pub fn set(&mut self, key: &str, v: &str) -> Result<bool, ConfigError> {
        match key {
            "process.roles" => self.roles = parse_roles(key, v)?,
            "controller.quorum.voters" => self.voters = parse_voters(key, v)?,
            "cluster.id" => {
                if v.is_empty()
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(invalid(key, v, "must be letters, digits, '-' or '_'"));
                }
                self.cluster_id = Some(v.to_string());
            }
            "broker.rack" => self.rack = (!v.is_empty()).then(|| v.to_string()),
            "broker.session.timeout.ms" => self.broker_session_timeout_ms = parse_positive(key, v)?,
            "broker.heartbeat.interval.ms" => self.broker_heartbeat_interval_ms = parse_positive(key, v)?,
            "controller.quorum.election.timeout.ms" => self.election_timeout_ms = parse_positive(key, v)?,
            "controller.quorum.request.timeout.ms" => {
                self.quorum_request_timeout_ms = parse_positive(key, v)?
            }
            "offsets.topic.replication.factor" => {
                self.offsets_topic_replication_factor = parse_positive(key, v)?
            }
            "metadata.log.max.record.bytes.between.snapshots" => {
                self.metadata_snapshot_interval_bytes = parse_positive(key, v)?
            }
            "replica.lag.time.max.ms" => self.replica_lag_time_max_ms = parse_positive(key, v)?,
            "replica.fetch.wait.max.ms" => self.replica_fetch_wait_max_ms = parse_positive(key, v)?,
            "replica.fetch.max.bytes" => self.replica_fetch_max_bytes = parse_positive(key, v)?,
            "replica.fetch.response.max.bytes" => {
                self.replica_fetch_response_max_bytes = parse_positive(key, v)?
            }
            "replica.fetch.backoff.ms" => self.replica_fetch_backoff_ms = parse_positive(key, v)?,
            "replica.socket.timeout.ms" => self.replica_socket_timeout_ms = parse_positive(key, v)?,
            "replica.high.watermark.checkpoint.interval.ms" => {
                self.replica_high_watermark_checkpoint_interval_ms = parse_positive(key, v)?
            }
            "auto.leader.rebalance.enable" => self.auto_leader_rebalance_enable = super::parse(key, v)?,
            "leader.imbalance.check.interval.seconds" => {
                self.leader_imbalance_check_interval_ms = parse_positive::<u64>(key, v)?.saturating_mul(1000)
            }
            "leader.imbalance.per.broker.percentage" => {
                self.leader_imbalance_per_broker_percentage = super::parse(key, v)?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The cross-setting rules Kafka checks at start: a controller is one of
    /// the voters, voter ids are unique, the session outlasts heartbeats.
    pub fn validate(&self, node_id: i32) -> Result<(), ConfigError> {
        let voters_text = || {
            self.voters
                .iter()
                .map(|v| format!("{}@{}:{}", v.id, v.host, v.port))
                .collect::<Vec<_>>()
                .join(",")
        };
        for (i, v) in self.voters.iter().enumerate() {
            if self.voters[..i].iter().any(|o| o.id == v.id) {
                return Err(invalid(
                    "controller.quorum.voters",
                    &voters_text(),
                    format!("node id {} is listed twice", v.id),
                ));
            }
        }
        if !self.voters.is_empty() && self.roles.controller && !self.voters.iter().any(|v| v.id == node_id) {
            return Err(invalid(
                "controller.quorum.voters",
                &voters_text(),
                format!("node.id {node_id} has the controller role but is not one of the voters"),
            ));
        }
        if self.voters.is_empty() && !(self.roles.broker && self.roles.controller) {
            return Err(invalid(
                "process.roles",
                &self.roles_text(),
                "a node with one role needs controller.quorum.voters",
            ));
        }
        if self.broker_heartbeat_interval_ms >= self.broker_session_timeout_ms {
            return Err(invalid(
                "broker.heartbeat.interval.ms",
                &self.broker_heartbeat_interval_ms.to_string(),
                format!(
                    "must be below broker.session.timeout.ms ({})",
                    self.broker_session_timeout_ms
                ),
            ));
        }
        for v in &self.voters {
            v.addr().map_err(|e| {
                invalid(
                    "controller.quorum.voters",
                    &voters_text(),
                    format!("cannot resolve {}: {e}", v.host),
                )
            })?;
        }
        Ok(())
    }

    pub fn roles_text(&self) -> String {
        match (self.roles.broker, self.roles.controller) {
            (true, true) => "broker,controller".into(),
            (true, false) => "broker".into(),
            _ => "controller".into(),
        }
    }

    /// This node's voter entry, if it is one.
    pub fn voter(&self, node_id: i32) -> Option<&Voter> {
        self.voters.iter().find(|v| v.id == node_id)
    }
}

fn parse_roles(key: &str, v: &str) -> Result<ProcessRoles, ConfigError> {
    let mut roles = ProcessRoles {
        broker: false,
        controller: false,
    };
    for role in v.split(',').map(str::trim) {
        match role {
            "broker" => roles.broker = true,
            "controller" => roles.controller = true,
            other => return Err(invalid(key, v, format!("unknown role {other:?}"))),
        }
    }
    if !roles.broker && !roles.controller {
        return Err(invalid(key, v, "expected broker, controller or both"));
    }
    Ok(roles)
}

/// `1@host:9093,2@host:9095`.
pub fn parse_voters(key: &str, v: &str) -> Result<Vec<Voter>, ConfigError> {
    if v.is_empty() {
        return Ok(Vec::new());
    }
    v.split(',')
        .map(str::trim)
        .map(|entry| {
            let bad = |why: &str| invalid(key, v, format!("{entry:?}: {why}; expected id@host:port"));
            let (id, addr) = entry.split_once('@').ok_or_else(|| bad("no '@'"))?;
            let id: i32 = id.parse().map_err(|_| bad("the id is not a number"))?;
            if id < 0 {
                return Err(bad("the id is negative"));
            }
            let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(bad("no host"));
            }
            let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
            Ok(Voter {
                id,
                host: host.to_string(),
                port,
            })
        })
        .collect()
}

/// One `listeners` entry: its name and address.
pub fn parse_listeners(key: &str, v: &str) -> Result<Vec<(String, String, u16)>, ConfigError> {
    v.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (name, addr) = entry.split_once("://").unwrap_or(("PLAINTEXT", entry));
            let name = name.to_ascii_uppercase();
            if name != "PLAINTEXT" && name != "CONTROLLER" {
                return Err(invalid(
                    key,
                    v,
                    format!("unknown listener name {name:?}; known: PLAINTEXT, CONTROLLER"),
                ));
            }
            let (host, port) = addr
                .rsplit_once(':')
                .ok_or_else(|| invalid(key, v, format!("{entry:?}: expected NAME://host:port")))?;
            let port: u16 = port.parse().map_err(|e| invalid(key, v, e))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let host = if host.is_empty() { "0.0.0.0" } else { host };
            Ok((name, host.to_string(), port))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_parse_and_bad_ones_are_refused() {
        let v = parse_voters("k", "1@127.0.0.1:9093, 2@localhost:9095").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v[1].id, v[1].host.as_str(), v[1].port), (2, "localhost", 9095));
        for bad in ["1@nohost", "x@h:1", "1h:2", "1@:9", "-1@h:1"] {
            assert!(parse_voters("k", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn controller_must_be_a_unique_voter() {
        let mut c = ClusterConfig::default();
        c.set("controller.quorum.voters", "1@127.0.0.1:9093,1@127.0.0.1:9095")
            .unwrap();
        let e = c.validate(1).unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
        c.set("controller.quorum.voters", "1@127.0.0.1:9093,2@127.0.0.1:9095")
            .unwrap();
        assert!(c
            .validate(3)
            .unwrap_err()
            .to_string()
            .contains("not one of the voters"));
        assert!(c.validate(2).is_ok());
        c.set("process.roles", "broker").unwrap();
        assert!(c.validate(3).is_ok());
        assert!(c.set("process.roles", "zookeeper").is_err());
    }

    #[test]
    fn unknown_listener_names_are_refused() {
        assert!(parse_listeners("listeners", "FOO://127.0.0.1:1").is_err());
        let l = parse_listeners("listeners", "PLAINTEXT://:9092,CONTROLLER://127.0.0.1:9093").unwrap();
        assert_eq!(l[0], ("PLAINTEXT".into(), "0.0.0.0".into(), 9092));
        assert_eq!(l[1].0, "CONTROLLER");
    }
}
