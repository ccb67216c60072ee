//! What `make install` installs besides the binaries, from the built binaries: `flowgate completion bash`
//! parses in bash and, sourced, registers a completion for `flowgate` that completes subcommands and flags;
//! zsh and fish scripts are what those shells expect; `flowgate man` and the agent write a roff page for
//! every subcommand, which `man` itself can format.

use std::process::Command;

use flowgate_tests::{TempDir, agent::agent_bin, flowgate, flowgate_bin};

fn completion(shell: &str) -> String {
    let out = flowgate(&["completion", shell]);
    assert!(out.status.success(), "completion {shell}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 script")
}

fn bash(script: &str) -> std::process::Output {
    Command::new("bash").args(["--norc", "--noprofile", "-c", script]).output().expect("run bash")
}

#[test]
fn bash_completion_parses_registers_and_completes() {
    let dir = TempDir::new("completion");
    let script = dir.path().join("flowgate.bash");
    std::fs::write(&script, completion("bash")).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&script).output().expect("bash -n");
    assert!(syntax.status.success(), "bash -n: {}", String::from_utf8_lossy(&syntax.stderr));

    // Sourced, it registers itself; asking it to complete `flowgate mon` and `flowgate monitor --rel` gives
    // the subcommand and the flag.
    let probe = format!(
        "source {script}\n\
         complete -p flowgate\n\
         COMP_WORDS=(flowgate mon); COMP_CWORD=1; COMP_LINE='flowgate mon'; COMP_POINT=${{#COMP_LINE}}\n\
         _flowgate flowgate mon flowgate; echo \"subcommands: ${{COMPREPLY[*]}}\"\n\
         COMP_WORDS=(flowgate monitor --rel); COMP_CWORD=2; COMP_LINE='flowgate monitor --rel'; \
         COMP_POINT=${{#COMP_LINE}}\n\
         _flowgate flowgate --rel monitor; echo \"flags: ${{COMPREPLY[*]}}\"\n",
        script = script.display()
    );
    let out = bash(&probe);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.lines().next().is_some_and(|l| l.starts_with("complete -") && l.ends_with(" flowgate")), "{stdout}");
    assert!(stdout.contains("subcommands: monitor"), "completes the subcommand:\n{stdout}");
    assert!(stdout.contains("flags: --related-to"), "completes the flag:\n{stdout}");
}

#[test]
fn zsh_and_fish_scripts_are_for_flowgate() {
    let zsh = completion("zsh");
    assert!(zsh.starts_with("#compdef flowgate"), "{}", &zsh[..zsh.len().min(200)]);
    let fish = completion("fish");
    assert!(fish.lines().any(|l| l.starts_with("complete -c flowgate") && l.contains("monitor")), "fish: {fish}");
    let unknown = flowgate(&["completion", "tcsh"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("[possible values: bash, zsh, fish]"));
}

#[test]
fn man_pages_for_every_subcommand_and_the_agent_are_roff() {
    let dir = TempDir::new("man");
    let listed = String::from_utf8(
        Command::new(flowgate_bin()).args(["man", "--out-dir"]).arg(dir.path()).output().expect("flowgate man").stdout,
    )
    .unwrap();
    let agent = Command::new(agent_bin()).env("FLOWGATE_AGENT_MAN_DIR", dir.path()).output().expect("agent man page");
    assert!(agent.status.success(), "{}", String::from_utf8_lossy(&agent.stderr));
    let mut pages: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    pages.sort();
    for page in
        ["flowgate.1", "flowgate-agent.1", "flowgate-monitor.1", "flowgate-lab-up.1", "flowgate-verdicts-export.1"]
    {
        assert!(pages.iter().any(|p| p == page), "{page} in {pages:?}");
    }
    assert_eq!(listed.lines().count() + 1, pages.len(), "flowgate man lists what it wrote:\n{listed}");
    for page in &pages {
        let path = dir.path().join(page);
        let roff = std::fs::read_to_string(&path).unwrap();
        let name = page.trim_end_matches(".1");
        assert!(roff.contains(&format!(".TH {name} 1")) && roff.contains(".SH SYNOPSIS"), "{page}:\n{roff}");
        // `man` renders it (groff); a page it cannot read would be empty or an error.
        let rendered = Command::new("man").arg("-l").arg(&path).env("MANWIDTH", "100").env("MANPAGER", "cat").output();
        if let Ok(out) = rendered
            && out.status.code() != Some(127)
        {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success() && text.contains("SYNOPSIS"), "man -l {page}:\n{text}");
        }
    }
    let agent_page = std::fs::read_to_string(dir.path().join("flowgate-agent.1")).unwrap();
    assert!(agent_page.contains("policies") && agent_page.contains("socket"), "the agent's flags are documented");
}
