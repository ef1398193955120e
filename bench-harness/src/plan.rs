//! `shardlog-bench plan`: turns a capacity sweep (capacity.json) into a
//! sizing recommendation. Pure arithmetic over measured figures; every
//! figure used is listed as evidence.
//!
//! Method (conservative, one assumption per line):
//! - partitions = max(consumer parallelism, target / (one partition's
//!   measured max rate x utilization)), where one partition's rate is the
//!   smallest step's max rate divided by its partition count;
//! - nodes: the fewest (at least the replication factor) such that each
//!   node's share of partition replicas lies within a measured step (the
//!   next larger measured count stands in for counts between steps), that
//!   step's fixed-load end-to-end p99 is within --p99-ms-max, and each
//!   node's share of the write load (target x RF / nodes) fits that step's
//!   max rate x utilization;
//! - cores (shards) per node scale linearly from the measuring host's cores
//!   (thread per core; the host shared its cores with the load generator,
//!   so this overestimates);
//! - disk per node = target x retention x RF / nodes, plus 10% for indexes
//!   and partly filled segments (values as produced: compression not
//!   counted);
//! - memory per node = the smallest step's RSS + RSS per partition (slope
//!   from the smallest to the largest step) x partitions per node.

use serde::Serialize;
use serde_json::Value;

/// Nodes tried before giving up (a bound on the search loop).
const NODES_MAX: u64 = 10_000;
/// Index files, time indexes and the active segment's slack on disk.
const DISK_OVERHEAD_FRACTION: f64 = 0.10;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepFigures {
    pub partitions: u64,
    pub max_mb_per_s: Option<f64>,
    pub fixed_e2e_p99_ms: Option<f64>,
    pub counts_match: bool,
    pub rss_bytes: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evidence {
    pub steps: Vec<StepFigures>,
    /// Cores of the host the sweep ran on (broker and client together).
    pub cores: u64,
    pub record_bytes: u64,
    pub fixed_mb_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PlanRequest {
    pub target_mb_per_s: f64,
    pub record_bytes: u64,
    pub consumer_parallelism: u64,
    pub retention_hours: f64,
    pub replication_factor: u64,
    /// Fraction of measured capacity to plan for (headroom for spikes,
    /// rebalances, catch-up reads).
    pub utilization: f64,
    pub p99_ms_max: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub partitions: u64,
    pub nodes: u64,
    pub partitions_per_node: u64,
    pub cores_per_node: u64,
    pub disk_gb_per_node: f64,
    pub memory_gib_per_node: Option<f64>,
    pub target_msgs_per_s: f64,
    pub evidence: Vec<String>,
    pub warnings: Vec<String>,
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Reads the figures `plan` needs from a capacity.json document.
pub fn evidence_from_capacity(doc: &Value) -> Result<Evidence, String> {
    let results = &doc["results"];
    let steps = results["steps"]
        .as_array()
        .ok_or("not a capacity report: no results.steps")?;
    let mut figures = Vec::new();
    for s in steps {
        let fixed = &s["fixed_load"];
        let max = &s["max_rate"];
        let counts_match = [fixed, max]
            .iter()
            .filter(|r| !r.is_null())
            .all(|r| r["counts_match"].as_bool() == Some(true));
        figures.push(StepFigures {
            partitions: s["partitions"].as_u64().ok_or("step without partitions")?,
            max_mb_per_s: num(&max["produce"]["mb_per_s"]),
            fixed_e2e_p99_ms: num(&fixed["consume"]["e2e_latency"]["p99_us"]).map(|us| us / 1000.0),
            counts_match,
            rss_bytes: num(&s["broker"]["rss_bytes"]),
        });
    }
    figures.sort_by_key(|s| s.partitions);
    Ok(Evidence {
        steps: figures,
        cores: doc["machine"]["nproc"].as_u64().unwrap_or(1).max(1),
        record_bytes: results["params"]["record_bytes"].as_u64().unwrap_or(0),
        fixed_mb_per_s: num(&results["params"]["fixed_mb_per_s"]).unwrap_or(0.0),
    })
}

pub fn plan(ev: &Evidence, req: &PlanRequest) -> Result<Plan, String> {
    if !(req.utilization > 0.0 && req.utilization <= 1.0) {
        return Err("utilization must be in (0, 1]".into());
    }
    let target_ok = req.target_mb_per_s.is_finite() && req.target_mb_per_s > 0.0;
    if !target_ok || req.replication_factor == 0 || req.consumer_parallelism == 0 {
        return Err("target, replication factor and consumer parallelism must be > 0".into());
    }
    let measured: Vec<&StepFigures> = ev.steps.iter().filter(|s| s.max_mb_per_s.is_some()).collect();
    let smallest = *measured
        .first()
        .ok_or("the capacity report has no max-rate figures")?;
    let mut evidence = Vec::new();
    let mut warnings = Vec::new();
    if ev.record_bytes != req.record_bytes {
        warnings.push(format!(
            "capacity was measured with {}-byte records, the plan is for {}-byte records: per-record costs differ",
            ev.record_bytes, req.record_bytes
        ));
    }

    let per_partition_mb_s = smallest.max_mb_per_s.unwrap_or(0.0) / smallest.partitions as f64;
    evidence.push(format!(
        "one partition: {:.1} MB/s at max rate (step with {} partition(s): {:.1} MB/s)",
        per_partition_mb_s,
        smallest.partitions,
        smallest.max_mb_per_s.unwrap_or(0.0)
    ));
    let for_throughput = (req.target_mb_per_s / (per_partition_mb_s * req.utilization)).ceil() as u64;
    let partitions = for_throughput.max(req.consumer_parallelism).max(1);

    let write_mb_s = req.target_mb_per_s * req.replication_factor as f64;
    let mut chosen = None;
    for nodes in req.replication_factor..=NODES_MAX {
        let per_node = (partitions * req.replication_factor).div_ceil(nodes);
        let Some(step) = measured.iter().find(|s| s.partitions >= per_node) else {
            continue; // more partitions per node than any step measured
        };
        let latency_ok = step.fixed_e2e_p99_ms.is_some_and(|p| p <= req.p99_ms_max) && step.counts_match;
        let capacity = step.max_mb_per_s.unwrap_or(0.0) * req.utilization;
        if latency_ok && write_mb_s / nodes as f64 <= capacity {
            chosen = Some((nodes, per_node, *step));
            break;
        }
    }
    let (nodes, per_node, step) = chosen.ok_or_else(|| {
        format!(
            "no node count up to {NODES_MAX} fits: no measured step has p99 <= {} ms with enough throughput",
            req.p99_ms_max
        )
    })?;
    evidence.push(format!(
        "{per_node} partition replicas per node: step with {} partitions measured {:.1} MB/s at max rate and end-to-end p99 {:.2} ms at {:.0} MB/s fixed load",
        step.partitions,
        step.max_mb_per_s.unwrap_or(0.0),
        step.fixed_e2e_p99_ms.unwrap_or(0.0),
        ev.fixed_mb_per_s
    ));
    let node_share_mb_s = write_mb_s / nodes as f64;
    let node_capacity = step.max_mb_per_s.unwrap_or(0.0) * req.utilization;
    evidence.push(format!(
        "write load per node {:.1} MB/s (target {:.1} x RF {}) / {nodes}; usable per node {:.1} MB/s ({:.0}% of measured)",
        node_share_mb_s,
        req.target_mb_per_s,
        req.replication_factor,
        node_capacity,
        req.utilization * 100.0
    ));
    let cores_per_node = ((ev.cores as f64 * node_share_mb_s / node_capacity).ceil() as u64).max(1);
    evidence.push(format!(
        "cores: the sweep ran on {} cores (shared with the load generator); scaled linearly",
        ev.cores
    ));
    let retention_s = req.retention_hours * 3600.0;
    let disk_gb_per_node =
        (node_share_mb_s * retention_s / 1000.0 * (1.0 + DISK_OVERHEAD_FRACTION) * 10.0).round() / 10.0;
    evidence.push(format!(
        "disk: {:.1} MB/s x {:.0} h retention per node, +{:.0}% for indexes and segment slack",
        node_share_mb_s,
        req.retention_hours,
        DISK_OVERHEAD_FRACTION * 100.0
    ));
    let memory_gib_per_node = memory_gib(ev, per_node, &mut evidence);
    if memory_gib_per_node.is_none() {
        warnings.push("no RSS figures (capacity ran without a local broker PID)".into());
    }
    Ok(Plan {
        partitions,
        nodes,
        partitions_per_node: per_node,
        cores_per_node,
        disk_gb_per_node,
        memory_gib_per_node,
        target_msgs_per_s: (req.target_mb_per_s * 1e6 / req.record_bytes.max(1) as f64).round(),
        evidence,
        warnings,
    })
}

/// Base RSS plus a per-partition slope between the smallest and largest steps.
fn memory_gib(ev: &Evidence, per_node: u64, evidence: &mut Vec<String>) -> Option<f64> {
    let with_rss: Vec<&StepFigures> = ev.steps.iter().filter(|s| s.rss_bytes.is_some()).collect();
    let first = with_rss.first()?;
    let last = with_rss.last()?;
    let base = first.rss_bytes?;
    let slope = if last.partitions > first.partitions {
        ((last.rss_bytes? - base) / (last.partitions - first.partitions) as f64).max(0.0)
    } else {
        0.0
    };
    evidence.push(format!(
        "memory: RSS {:.0} MiB at {} partitions, {:.1} KiB more per partition up to {}",
        base / 1048576.0,
        first.partitions,
        slope / 1024.0,
        last.partitions
    ));
    let bytes = base + slope * per_node.saturating_sub(first.partitions) as f64;
    Some((bytes / (1u64 << 30) as f64 * 100.0).round() / 100.0)
}

pub fn print(plan: &Plan, req: &PlanRequest) {
    println!(
        "plan for {:.1} MB/s ({:.0} msgs/s of {} bytes), {} consumers, {:.0} h retention, RF {}, {:.0}% utilization, p99 <= {} ms:",
        req.target_mb_per_s,
        plan.target_msgs_per_s,
        req.record_bytes,
        req.consumer_parallelism,
        req.retention_hours,
        req.replication_factor,
        req.utilization * 100.0,
        req.p99_ms_max
    );
    println!("  partitions:          {}", plan.partitions);
    println!("  nodes:               {}", plan.nodes);
    println!("  partitions per node: {}", plan.partitions_per_node);
    println!("  cores (shards)/node: {}", plan.cores_per_node);
    println!("  disk per node:       {:.1} GB", plan.disk_gb_per_node);
    if let Some(m) = plan.memory_gib_per_node {
        println!("  memory per node:     {m:.2} GiB (broker RSS)");
    }
    println!("evidence:");
    for e in &plan.evidence {
        println!("  - {e}");
    }
    for w in &plan.warnings {
        println!("warning: {w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(partitions: u64, max: f64, p99: f64, rss_mib: f64) -> StepFigures {
        StepFigures {
            partitions,
            max_mb_per_s: Some(max),
            fixed_e2e_p99_ms: Some(p99),
            counts_match: true,
            rss_bytes: Some(rss_mib * 1048576.0),
        }
    }

    fn evidence() -> Evidence {
        Evidence {
            steps: vec![
                step(1, 200.0, 2.0, 100.0),
                step(10, 400.0, 3.0, 110.0),
                step(100, 500.0, 5.0, 120.0),
                step(1000, 300.0, 20.0, 200.0),
                step(10000, 100.0, 200.0, 1100.0),
            ],
            cores: 2,
            record_bytes: 1024,
            fixed_mb_per_s: 50.0,
        }
    }

    fn request(target: f64) -> PlanRequest {
        PlanRequest {
            target_mb_per_s: target,
            record_bytes: 1024,
            consumer_parallelism: 1,
            retention_hours: 24.0,
            replication_factor: 1,
            utilization: 0.5,
            p99_ms_max: 50.0,
        }
    }

    #[test]
    fn small_target_fits_one_node_with_one_partition() {
        let p = plan(&evidence(), &request(50.0)).unwrap();
        // 200 MB/s per partition x 0.5 = 100 >= 50.
        assert_eq!((p.partitions, p.nodes, p.partitions_per_node), (1, 1, 1));
        // 50 MB/s of 100 usable on 2 cores.
        assert_eq!(p.cores_per_node, 1);
        // 50 MB/s x 86,400 s = 4,320 GB, + 10%.
        assert_eq!(p.disk_gb_per_node, 4752.0);
        assert_eq!(p.memory_gib_per_node, Some(0.1));
        assert_eq!(p.target_msgs_per_s, 48828.0);
        assert!(p.evidence.iter().any(|e| e.contains("step with 1 partitions")));
    }

    #[test]
    fn consumer_parallelism_sets_the_partition_floor_and_steps_round_up() {
        let mut r = request(50.0);
        r.consumer_parallelism = 40;
        let p = plan(&evidence(), &r).unwrap();
        assert_eq!(p.partitions, 40);
        // 40 per node is covered by the 100-partition step (500 x 0.5 = 250 MB/s).
        assert_eq!((p.nodes, p.partitions_per_node), (1, 40));
        assert!(p.evidence.iter().any(|e| e.contains("step with 100 partitions")));
    }

    #[test]
    fn big_target_needs_more_nodes() {
        // 1000 MB/s: partitions = 1000 / (200 x 0.5) = 10; 10 per node fits the
        // 10-partition step at 200 MB/s usable, so 5 nodes of 2 partitions?
        // No: 1000 / 5 = 200 <= 200, with 2 per node -> the 10-step (400 x 0.5).
        let p = plan(&evidence(), &request(1000.0)).unwrap();
        assert_eq!(p.partitions, 10);
        assert_eq!(p.nodes, 5);
        assert_eq!(p.partitions_per_node, 2);
        assert_eq!(p.cores_per_node, 2);
    }

    #[test]
    fn replication_multiplies_load_and_sets_a_node_floor() {
        let mut r = request(50.0);
        r.replication_factor = 3;
        let p = plan(&evidence(), &r).unwrap();
        assert_eq!(p.nodes, 3);
        // 150 MB/s of writes over 3 nodes: 50 each; disk per node as RF 1 on one node.
        assert_eq!(p.disk_gb_per_node, 4752.0);
    }

    #[test]
    fn latency_bound_rules_out_dense_steps() {
        let mut r = request(50.0);
        r.consumer_parallelism = 5000;
        r.p99_ms_max = 50.0;
        // 5000 per node would need the 10,000 step (p99 200 ms): split until
        // a node holds <= 1000 (the 1000 step, p99 20 ms).
        let p = plan(&evidence(), &r).unwrap();
        assert_eq!(p.nodes, 5);
        assert_eq!(p.partitions_per_node, 1000);
        r.p99_ms_max = 1.0;
        assert!(plan(&evidence(), &r).is_err());
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut r = request(50.0);
        r.utilization = 1.5;
        assert!(plan(&evidence(), &r).is_err());
        let empty = Evidence {
            steps: vec![],
            ..evidence()
        };
        assert!(plan(&empty, &request(50.0)).is_err());
    }

    #[test]
    fn evidence_reads_a_capacity_report() {
        let doc = serde_json::json!({
            "machine": {"nproc": 2},
            "results": {
                "params": {"record_bytes": 1024, "fixed_mb_per_s": 50.0},
                "steps": [{
                    "partitions": 10,
                    "fixed_load": {"counts_match": true, "consume": {"e2e_latency": {"p99_us": 1500}}},
                    "max_rate": {"counts_match": true, "produce": {"mb_per_s": 321.5}},
                    "broker": {"rss_bytes": 1048576},
                }]
            }
        });
        let ev = evidence_from_capacity(&doc).unwrap();
        assert_eq!(
            ev.steps,
            vec![StepFigures {
                partitions: 10,
                max_mb_per_s: Some(321.5),
                fixed_e2e_p99_ms: Some(1.5),
                counts_match: true,
                rss_bytes: Some(1048576.0),
            }]
        );
        assert_eq!((ev.cores, ev.record_bytes), (2, 1024));
    }
}
