//! The schedule and the figures: for each size, rounds in which every enforcer in turn is put in place,
//! proven to refuse a pod the policy does not admit, measured under the three loads, and removed. The order
//! of the enforcers rotates from round to round, and each figure is the median over rounds of a ratio taken
//! within one round (enforcer / baseline, or flowgate / another enforcer), so drift on this shared machine
//! cancels out.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use flowgate_lab::LabState;

use super::{
    enforcer::{self, Enforcer, Installed, KernelRecords},
    knp::KnpCluster,
    load::{self, Load, Servers},
    profile::{self, LoadProfile},
    rules::RuleSet,
};
use crate::{
    machine::StealMeter,
    report::{Figure, Section, Target},
};

/// A measurement during which the host stole more than this share of the CPU (percent) is taken again, up
/// to [`STOLEN_RETRIES`] times: its rate would be the neighbours' as much as the enforcer's. Every
/// enforcer and the baseline alike; the figures say how many were taken again.
const STOLEN_PERCENT: f64 = 5.0;
const STOLEN_RETRIES: usize = 2;

/// How long an enforcer may take, once started, until the probe is refused and the client admitted.
pub const ENFORCING_WITHIN: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub sizes: Vec<usize>,
    pub rounds: usize,
    /// Per load and enforcer, per round.
    pub duration: Duration,
    pub enforcers: Vec<Enforcer>,
}

/// The pods of the benchmark's lab.
pub struct Pods<'a> {
    pub lab: &'a LabState,
    pub client_netns: String,
    pub intruder_netns: String,
    pub client: std::net::Ipv4Addr,
    pub server: std::net::Ipv4Addr,
}

/// Rates of one round: (enforcer, load) -> rate.
type Round = BTreeMap<(Enforcer, Load), f64>;

/// Everything measured at one size.
#[derive(Default)]
struct SizeResult {
    rounds: Vec<Round>,
    /// Whether the probe was refused, per enforcer (checked in every round before measuring; the first
    /// round's outcome), or why the enforcer could not run.
    probes: BTreeMap<Enforcer, Result<bool, String>>,
    /// Time from starting the enforcer to enforcement, per enforcer, per round.
    enforcing_after: BTreeMap<Enforcer, Vec<Duration>>,
    /// CPU the enforcer's own process took while a load ran, per (enforcer, load), per round: (share of a
    /// core, microseconds per operation).
    process_cpu: BTreeMap<(Enforcer, Load), Vec<(f64, f64)>>,
    /// The share of the machine's CPU time the host stole while each load ran, per (enforcer, load), per
    /// round, in percent.
    steal: BTreeMap<(Enforcer, Load), Vec<f64>>,
    /// Measurements taken again because the host stole more than [`STOLEN_PERCENT`] during them.
    measured_again: usize,
    /// flowgate's kernel records while each load ran, per (enforcer, load), per round: the counts and the
    /// records read per operation.
    records: BTreeMap<(Enforcer, Load), Vec<(KernelRecords, f64)>>,
    /// What [`Enforcer::FlowgateStopped`]'s agent read, and was told the kernel lost, while it was stopped
    /// (the prefill and the loads), per round.
    refused: Vec<KernelRecords>,
    /// What [`Enforcer::FlowgateBareReader`]'s reader read, per round.
    bare_read: Vec<u64>,
    /// What the enforcer's programs took per load, read in a pass of their own after the rounds
    /// ([`PROFILED`]), or why they could not be read.
    profiles: BTreeMap<Enforcer, Result<Vec<LoadProfile>, String>>,
}

/// The enforcers whose programs' run time on real traffic is read after the rounds: flowgate, the hook
/// floor for what a program that only returns takes (the kernel's statistics' own cost among it), and the
/// custom variant when it runs (another build's programs, or the agent with other settings, beside
/// flowgate's).
const PROFILED: [Enforcer; 3] = [Enforcer::Flowgate, Enforcer::HookFloor, Enforcer::FlowgateCustom];

/// kube-network-policies' cluster, or why it could not be set up.
pub type KnpState = Result<KnpCluster, String>;

/// Runs the plan and returns the section's figures.
pub fn run(plan: &Plan, pods: &Pods<'_>, servers: &Servers, mut knp: Option<&mut KnpState>) -> anyhow::Result<Section> {
    let mut section = Section::new("traffic");
    for &size in &plan.sizes {
        let rules = RuleSet::new(size, pods.client, pods.server);
        if let Some(Ok(cluster)) = knp.as_deref_mut() {
            cluster.apply_rules(&rules);
        }
        let mut result = SizeResult::default();
        for round in 0..plan.rounds {
            let mut order = plan.enforcers.clone();
            let turn = round % order.len().max(1);
            order.rotate_left(turn);
            let mut rates = Round::new();
            for &enforcer in &order {
                if result.probes.get(&enforcer).is_some_and(Result::is_err) {
                    continue; // It did not enforce in an earlier round: no figure would mean anything.
                }
                let started = Instant::now();
                let installed = match enforcer {
                    Enforcer::KubeNetworkPolicies => match knp.as_deref() {
                        Some(Ok(cluster)) => {
                            cluster.start_enforcer(pods.lab).map(|k| Installed::KubeNetworkPolicies(Box::new(k)))
                        }
                        Some(Err(why)) => Err(anyhow::anyhow!("{why}")),
                        None => continue,
                    },
                    other => enforcer::install(other, pods.lab, &rules),
                };
                let mut installed = match installed {
                    Ok(i) => i,
                    Err(e) => {
                        eprintln!("traffic: {} at {size} rules could not start: {e:#}", enforcer.name());
                        result.probes.insert(enforcer, Err(format!("did not start: {e:#}")));
                        continue;
                    }
                };
                match wait_enforcing(enforcer, pods, servers, &mut installed) {
                    Ok(refused) => {
                        result.probes.entry(enforcer).or_insert(Ok(refused));
                    }
                    Err(e) => {
                        eprintln!("traffic: {} at {size} rules: {e:#}", enforcer.name());
                        result.probes.insert(enforcer, Err(format!("{e:#}")));
                        continue;
                    }
                }
                result.enforcing_after.entry(enforcer).or_default().push(started.elapsed());
                if enforcer == Enforcer::FlowgateBareReader {
                    installed
                        .stop_agent_for_bare_reader()
                        .with_context(|| format!("stopping the agent for a bare reader at {size} rules"))?;
                }
                if enforcer == Enforcer::FlowgateStopped {
                    installed
                        .stop_agent(|| {
                            load::run(Load::Connections, &pods.client_netns, servers, pods.server, enforcer::PREFILL)
                                .map(drop)
                        })
                        .with_context(|| format!("stopping the agent and filling its ring at {size} rules"))?;
                }
                for load in Load::ALL {
                    let mut attempt = 0;
                    let (rate, stolen, records, cpu_before, seconds) = loop {
                        let (cpu_before, records_before) = (installed.process_cpu(), installed.kernel_records());
                        let (wall, steal) = (Instant::now(), StealMeter::start());
                        let rate = load::run(load, &pods.client_netns, servers, pods.server, plan.duration)
                            .with_context(|| format!("{} under {} at {size} rules", load.name(), enforcer.name()))?;
                        // The load's wall time, before the status calls below add theirs.
                        let seconds = wall.elapsed().as_secs_f64();
                        let stolen = steal.percent();
                        let records = records_before.zip(installed.kernel_records()).map(|(b, a)| b.until(a));
                        if attempt < STOLEN_RETRIES && stolen.is_some_and(|p| p > STOLEN_PERCENT) {
                            attempt += 1;
                            result.measured_again += 1;
                            println!(
                                "  round {}, {size} rules, {} {}: host steal {:.1}%, measured again",
                                round + 1,
                                enforcer.name(),
                                load.name(),
                                stolen.unwrap_or_default()
                            );
                            continue;
                        }
                        break (rate, stolen, records, cpu_before, seconds);
                    };
                    if let (Some(before), Some(after)) = (cpu_before, installed.process_cpu()) {
                        let cpu = (after - before).as_secs_f64();
                        let per_op_us = cpu / (rate.mean * seconds) * 1e6;
                        result.process_cpu.entry((enforcer, load)).or_default().push((cpu / seconds, per_op_us));
                    }
                    println!(
                        "  round {}, {size} rules, {:<30} {:<22} {:>9.0} {} (best slice; mean {:.0}; host steal {})",
                        round + 1,
                        enforcer.name(),
                        load.name(),
                        rate.best_slice,
                        load.unit(),
                        rate.mean,
                        stolen.map_or_else(|| "unknown".to_owned(), |p| format!("{p:.1}%")),
                    );
                    if let Some(p) = stolen {
                        result.steal.entry((enforcer, load)).or_default().push(p);
                    }
                    if let Some(r) = records {
                        println!("    {} kernel records read, {} lost", r.read, r.lost);
                        let per_op = r.read as f64 / (rate.mean * seconds);
                        result.records.entry((enforcer, load)).or_default().push((r, per_op));
                    }
                    rates.insert((enforcer, load), rate.best_slice);
                }
                if let Some(read) = installed.bare_reader_read() {
                    println!("    the bare reader read {read} records");
                    result.bare_read.push(read);
                }
                if let Some(r) = installed.resume_agent() {
                    println!("    while the agent was stopped: {} kernel records read, {} lost", r.read, r.lost);
                    result.refused.push(r);
                }
                drop(installed);
            }
            result.rounds.push(rates);
        }
        for enforcer in PROFILED {
            if plan.enforcers.contains(&enforcer) && result.probes.get(&enforcer).is_some_and(Result::is_ok) {
                let profiles = profile_pass(enforcer, pods, servers, &rules, plan.duration);
                if let Err(e) = &profiles {
                    eprintln!("traffic: {}'s programs at {size} rules: {e}", enforcer.name());
                }
                result.profiles.insert(enforcer, profiles);
            }
        }
        figures(&mut section, size, plan, &result);
    }
    Ok(section)
}

/// Puts `enforcer` in place once more and reads what its programs take under each load
/// ([`profile::profile_loads`]).
fn profile_pass(
    enforcer: Enforcer,
    pods: &Pods<'_>,
    servers: &Servers,
    rules: &RuleSet,
    duration: Duration,
) -> Result<Vec<LoadProfile>, String> {
    let mut installed = enforcer::install(enforcer, pods.lab, rules).map_err(|e| format!("did not start: {e:#}"))?;
    wait_enforcing(enforcer, pods, servers, &mut installed).map_err(|e| format!("{e:#}"))?;
    let profiles = profile::profile_loads(pods.lab, &pods.client_netns, servers, pods.server, duration)
        .map_err(|e| format!("{e:#}"))?;
    for p in &profiles {
        let programs: Vec<String> = p
            .programs
            .iter()
            .map(|(name, s)| format!("{name} {} runs, {:.0} ns each", s.runs, s.ns_per_run()))
            .collect();
        println!("  programs' run time, {:<30} {:<22} {}", enforcer.name(), p.load.name(), programs.join("; "));
    }
    Ok(profiles)
}

/// Waits until the probe from the intruder pod is refused and the client admitted (for the baseline: until
/// both are admitted, which shows the probe can see a pass). Returns whether the probe was refused.
fn wait_enforcing(
    enforcer: Enforcer,
    pods: &Pods<'_>,
    servers: &Servers,
    installed: &mut Installed,
) -> anyhow::Result<bool> {
    let started = Instant::now();
    loop {
        let probe = load::probe(&pods.intruder_netns, servers, pods.server)?;
        let client = load::client_admitted(&pods.client_netns, servers, pods.server)?;
        let expected = if matches!(enforcer, Enforcer::Baseline | Enforcer::HookFloor) {
            probe.tcp_admitted && probe.udp_admitted
        } else {
            probe.refused()
        };
        if client && expected {
            return Ok(probe.refused());
        }
        if let Some(why) = installed.gave_up() {
            anyhow::bail!("not enforcing after {:?} (probe from the intruder pod {probe:?}): {why}", started.elapsed());
        }
        if started.elapsed() > ENFORCING_WITHIN {
            let log = installed.log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            anyhow::bail!(
                "not enforcing after {ENFORCING_WITHIN:?}: probe from the intruder pod {probe:?}, client admitted: \
                 {client}{}",
                if tail.is_empty() {
                    String::new()
                } else {
                    format!("; end of its log:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
                }
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 })
}

/// `a / b` per round where both were measured.
fn ratios(rounds: &[Round], a: (Enforcer, Load), b: (Enforcer, Load)) -> Vec<f64> {
    rounds.iter().filter_map(|r| Some(r.get(&a)? / r.get(&b)?)).collect()
}

fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{} rounds, {min:.3}-{max:.3}", values.len())
}

fn figures(section: &mut Section, size: usize, plan: &Plan, result: &SizeResult) {
    let rounds = &result.rounds;
    let rules = format!("{} rules", thousands(size));
    for (&enforcer, probe) in &result.probes {
        let name = format!("probe from a pod not admitted refused: {}, {rules}", enforcer.name());
        let figure = match probe {
            Ok(refused) => {
                let f = Figure::new(name, f64::from(u8::from(*refused)), "1 = refused");
                let after = result.enforcing_after.get(&enforcer).and_then(|d| d.first()).copied().unwrap_or_default();
                if enforcer == Enforcer::Baseline {
                    f.note("no enforcer: the probe must get through, which shows it can see a pass")
                } else if enforcer == Enforcer::HookFloor {
                    f.note("a program that only returns enforces nothing: the probe gets through")
                } else {
                    f.target(Target::at_least(1.0)).note(format!(
                        "TCP connect and 10 UDP datagrams, refused in every round before measuring; enforcing \
                         {} ms after start in the first round (the probe included)",
                        after.as_millis()
                    ))
                }
            }
            Err(why) => Figure::new(name, 0.0, "1 = refused").target(Target::at_least(1.0)).note(why.clone()),
        };
        section.push(figure);
    }
    if !result.refused.is_empty() {
        let read: u64 = result.refused.iter().map(|r| r.read).sum();
        let lost: u64 = result.refused.iter().map(|r| r.lost).sum();
        section.push(
            Figure::new(
                format!(
                    "kernel records refused while the agent was stopped: {}, {rules}",
                    Enforcer::FlowgateStopped.name()
                ),
                lost as f64,
                "records",
            )
            .note(format!(
                "over {} rounds, each a prefill of {:?} of new connections and the loads, the agent stopped \
                 (SIGSTOP) throughout: {read} read by it once resumed (what filled the ring), {lost} refused in \
                 the kernel (the ring full) and counted lost",
                result.refused.len(),
                enforcer::PREFILL
            )),
        );
    }
    if !result.bare_read.is_empty() {
        let name = format!("kernel records the bare reader read: {}, {rules}", Enforcer::FlowgateBareReader.name());
        section.push(Figure::new(name, result.bare_read.iter().sum::<u64>() as f64, "records").note(format!(
            "over {} rounds: the agent's ring drained in its place while the loads ran",
            result.bare_read.len()
        )));
    }
    if let Some(figure) = steal_figure(&result.steal, result.measured_again, &rules) {
        section.push(figure);
    }
    for load in Load::ALL {
        let base: Vec<f64> = rounds.iter().filter_map(|r| r.get(&(Enforcer::Baseline, load)).copied()).collect();
        if let Some(m) = median(base.clone()) {
            let note = format!(
                "median over {} rounds of the best of {} slices of {:?}; {}",
                base.len(),
                load::SLICES,
                plan.duration,
                spread(&base)
            );
            section.push(
                Figure::new(format!("{}, {}, {rules}", Enforcer::Baseline.name(), load.name()), m, load.unit())
                    .note(note),
            );
        }
        for &enforcer in plan.enforcers.iter().filter(|e| **e != Enforcer::Baseline) {
            let r = ratios(rounds, (enforcer, load), (Enforcer::Baseline, load));
            let Some(m) = median(r.clone()) else { continue };
            let rates: Vec<f64> = rounds.iter().filter_map(|x| x.get(&(enforcer, load)).copied()).collect();
            let mut f =
                Figure::new(format!("{}, {}, {rules}", enforcer.name(), load.name()), m, "x baseline").note(format!(
                    "median ratio to the baseline of the same round ({}); median {:.0} {}",
                    spread(&r),
                    median(rates).unwrap_or_default(),
                    load.unit()
                ));
            if enforcer == Enforcer::Flowgate {
                f = f.target(Target::at_least(0.90));
            }
            if enforcer == Enforcer::FlowgateCustom {
                f.note.push_str(&enforcer::custom_note());
            }
            section.push(f);
        }
        for &enforcer in &plan.enforcers {
            let Some(samples) = result.process_cpu.get(&(enforcer, load)) else { continue };
            let share = median(samples.iter().map(|s| s.0 * 100.0).collect()).unwrap_or_default();
            let per_op = median(samples.iter().map(|s| s.1).collect()).unwrap_or_default();
            section.push(
                Figure::new(
                    format!("{} process CPU during {}, {rules}", enforcer.name(), load.name()),
                    share,
                    "% of a core",
                )
                .note(format!(
                    "user + system time of the enforcer's process (for flowgate: the agent reading, decoding and \
                         enriching the kernel's records) while the load ran, median of {} rounds; about {per_op:.2} \
                         us per {}",
                    samples.len(),
                    load.operation()
                )),
            );
        }
        for (&enforcer, profiles) in &result.profiles {
            section.push(profile_figure(enforcer, load, &rules, profiles));
        }
        for &enforcer in &plan.enforcers {
            if let Some(samples) = result.records.get(&(enforcer, load)) {
                section.push(records_figure(enforcer, load, &rules, samples));
            }
        }
        // flowgate against each alternative, within each round.
        for &other in plan.enforcers.iter().filter(|e| !matches!(e, Enforcer::Baseline | Enforcer::Flowgate)) {
            let r = ratios(rounds, (Enforcer::Flowgate, load), (other, load));
            let Some(m) = median(r.clone()) else { continue };
            let target = match (other, load) {
                (Enforcer::IptablesConntrack, Load::Connections) if size == 10_000 => Some(5.0),
                (Enforcer::Iptables, Load::UdpPackets) if size == 10_000 => Some(30.0),
                (Enforcer::Ipset | Enforcer::KubeNetworkPolicies, _) => Some(1.0),
                _ => None,
            };
            let mut f = Figure::new(format!("flowgate / {}, {}, {rules}", other.name(), load.name()), m, "x")
                .note(format!("median ratio within a round ({})", spread(&r)));
            if let Some(t) = target {
                f = f.target(Target::at_least(t));
            }
            section.push(f);
        }
    }
}

/// The host's steal while the loads ran at one size: the median over every measurement, the largest, and each
/// enforcer's median (a ratio whose two sides met different steal is a ratio of the neighbours too).
fn steal_figure(steal: &BTreeMap<(Enforcer, Load), Vec<f64>>, measured_again: usize, rules: &str) -> Option<Figure> {
    let all: Vec<f64> = steal.values().flatten().copied().collect();
    let median_all = median(all.clone())?;
    let max = all.iter().copied().fold(0.0, f64::max);
    let mut per_enforcer: BTreeMap<Enforcer, Vec<f64>> = BTreeMap::new();
    for ((enforcer, _), values) in steal {
        per_enforcer.entry(*enforcer).or_default().extend(values);
    }
    let each = per_enforcer
        .into_iter()
        .filter_map(|(e, v)| Some(format!("{} {:.1}", e.name(), median(v)?)))
        .collect::<Vec<_>>()
        .join(", ");
    Some(Figure::new(format!("host steal while the loads ran, {rules}"), median_all, "% of CPU time").note(format!(
        "median over {} measurements (enforcer, load, round), the largest {max:.1}%; per enforcer: {each}; {measured_again} \
         measured again for more than {STOLEN_PERCENT}% (at most {STOLEN_RETRIES} times each, the last one kept)",
        all.len()
    )))
}

/// flowgate's kernel records per operation of `load`, and whether any were lost (a lost record is work the
/// agent did not do, which would flatter the rate).
fn records_figure(enforcer: Enforcer, load: Load, rules: &str, samples: &[(KernelRecords, f64)]) -> Figure {
    let operation = load.operation();
    let per_op = median(samples.iter().map(|s| s.1).collect()).unwrap_or_default();
    let read: u64 = samples.iter().map(|s| s.0.read).sum();
    let lost: u64 = samples.iter().map(|s| s.0.lost).sum();
    Figure::new(
        format!("kernel records per {operation}: {}, {}, {rules}", enforcer.name(), load.name()),
        per_op,
        format!("records/{operation}"),
    )
    .note(format!(
        "records the agent read while the load ran (its status counters before and after) over the {operation}s \
         done, median of {} rounds; {read} read and {lost} lost in the kernel over those rounds",
        samples.len()
    ))
}

/// What `enforcer`'s programs took per operation of `load`, from the pass after the rounds.
fn profile_figure(enforcer: Enforcer, load: Load, rules: &str, profiles: &Result<Vec<LoadProfile>, String>) -> Figure {
    let operation = load.operation();
    let name = format!("programs' run time per {operation}: {}, {}, {rules}", enforcer.name(), load.name());
    let unit = format!("ns/{operation}");
    let profile = match profiles {
        Ok(profiles) => profiles.iter().find(|p| p.load == load),
        Err(why) => return Figure::new(name, 0.0, unit).note(format!("not read: {why}")),
    };
    let Some(profile) = profile else { return Figure::new(name, 0.0, unit).note("not read: no such load") };
    let operations = profile.operations().max(1.0);
    let programs: Vec<String> = profile
        .programs
        .iter()
        .map(|(program, s)| {
            format!(
                "{program}: {:.1} runs per {operation}, {:.0} ns per run",
                s.runs as f64 / operations,
                s.ns_per_run()
            )
        })
        .collect();
    Figure::new(name, profile.total().run_time_ns as f64 / operations, unit).note(format!(
        "the kernel's BPF run-time statistics of the programs on the pod interfaces, one pass after the rounds \
         ({:.0} {} over {:.1} s; the statistics' two clock reads per run are inside, and the pass is in no ratio): {}",
        profile.rate,
        load.unit(),
        profile.wall.as_secs_f64(),
        programs.join("; ")
    ))
}

/// 10000 -> "10,000".
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_thousands() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(thousands(10), "10");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(10_000), "10,000");
    }

    #[test]
    fn ratios_pair_rates_of_the_same_round_only() {
        let mut a = Round::new();
        a.insert((Enforcer::Flowgate, Load::Connections), 90.0);
        a.insert((Enforcer::Baseline, Load::Connections), 100.0);
        let mut b = Round::new();
        b.insert((Enforcer::Baseline, Load::Connections), 50.0);
        let r = ratios(&[a, b], (Enforcer::Flowgate, Load::Connections), (Enforcer::Baseline, Load::Connections));
        assert_eq!(r, vec![0.9]);
    }

    #[test]
    fn steal_is_reported_over_every_measurement_and_per_enforcer() {
        let mut steal = BTreeMap::new();
        steal.insert((Enforcer::Baseline, Load::Connections), vec![1.0, 2.0]);
        steal.insert((Enforcer::Baseline, Load::UdpPackets), vec![3.0]);
        steal.insert((Enforcer::Flowgate, Load::Connections), vec![10.0, 20.0]);
        let f = steal_figure(&steal, 3, "10 rules").expect("a figure");
        assert_eq!(f.value, 3.0, "the median of 1, 2, 3, 10, 20");
        assert!(f.note.contains("largest 20.0%"), "{}", f.note);
        assert!(f.note.contains("baseline (no policy) 2.0, flowgate 15.0"), "{}", f.note);
        assert!(f.note.contains("; 3 measured again for more than 5%"), "{}", f.note);
        assert!(steal_figure(&BTreeMap::new(), 0, "10 rules").is_none(), "no figure without a reading");
    }
}
