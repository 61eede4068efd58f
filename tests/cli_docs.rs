//! `hytun completions SHELL` and `hytun man`: the scripts are accepted by
//! the shells that are installed (`bash -n` always; `zsh -n` and `fish
//! --no-execute` when present), bash really registers the completion, and
//! the man pages render with `man -l` (or groff) without warnings and list
//! every subcommand and the server's flags.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

use std::path::Path;
use std::process::{Command, Stdio};

use hytun_tests::hytun;

const SUBCOMMANDS: [&str; 7] = [
    "keygen",
    "server",
    "client",
    "fetch",
    "demo",
    "completions",
    "man",
];

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

fn completions(dir: &Path, shell: &str) -> std::path::PathBuf {
    let out = hytun(dir, &["completions", shell]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8(out.stdout).expect("utf-8 script");
    assert!(
        script.contains("proxy-protocol-from"),
        "{shell}: server flags missing"
    );
    for sub in SUBCOMMANDS {
        assert!(script.contains(sub), "{shell}: subcommand {sub} missing");
    }
    let path = dir.join(format!("hytun.{shell}"));
    std::fs::write(&path, script).expect("write script");
    path
}

#[test]
fn bash_completion_parses_and_registers() {
    let dir = tempfile::tempdir().unwrap();
    let path = completions(dir.path(), "bash");
    let path = path.to_str().unwrap();
    let syntax = run("bash", &["-n", path]);
    assert!(
        syntax.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    // Sourcing it registers a completion function for `hytun`.
    let reg = run(
        "bash",
        &["-c", &format!("source '{path}' && complete -p hytun")],
    );
    let shown = String::from_utf8_lossy(&reg.stdout);
    assert!(
        reg.status.success(),
        "{}",
        String::from_utf8_lossy(&reg.stderr)
    );
    assert!(
        shown.contains("-F") && shown.ends_with("hytun\n"),
        "{shown}"
    );
}

#[test]
fn zsh_and_fish_completions_parse_where_installed() {
    let dir = tempfile::tempdir().unwrap();
    // Generated (and checked for content) either way; syntax-checked by
    // the shell only where it is installed.
    for (shell, check) in [("zsh", &["-n"][..]), ("fish", &["--no-execute"][..])] {
        let path = completions(dir.path(), shell);
        if installed(shell) {
            let mut args = check.to_vec();
            args.push(path.to_str().unwrap());
            let out = run(shell, &args);
            assert!(
                out.status.success(),
                "{shell}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let bad = hytun(dir.path(), &["completions", "tcsh"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("possible values"));
}

/// Renders a man page: `man -l` if present, else groff, else `None`.
/// Warnings fail the test.
fn render(page: &Path) -> Option<String> {
    let page = page.to_str().unwrap();
    if installed("groff") {
        let warn = run("groff", &["-man", "-Tutf8", "-ww", "-z", page]);
        assert!(
            warn.status.success() && warn.stderr.is_empty(),
            "groff warnings for {page}: {}",
            String::from_utf8_lossy(&warn.stderr)
        );
    }
    let out = if installed("man") {
        Command::new("man")
            .args(["-l", page])
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .output()
            .ok()?
    } else if installed("groff") {
        run("groff", &["-man", "-Tutf8", page])
    } else {
        return None;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Strip overstrike (bold/underline) if the formatter used it.
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut plain = String::new();
    for c in text.chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    Some(plain)
}

#[test]
fn man_page_lists_every_subcommand_and_renders() {
    let dir = tempfile::tempdir().unwrap();
    let out = hytun(dir.path(), &["man"]);
    assert!(out.status.success());
    let roff = String::from_utf8(out.stdout).expect("utf-8 roff");
    assert!(roff.contains(".TH hytun 1"), "not a man page:\n{roff}");
    assert!(roff.contains(".SH SUBCOMMANDS"));
    for sub in SUBCOMMANDS {
        assert!(
            roff.contains(&format!("hytun\\-{sub}(1)")),
            "subcommand {sub} not listed"
        );
    }
    let page = dir.path().join("hytun.1");
    std::fs::write(&page, &roff).unwrap();
    if let Some(text) = render(&page) {
        assert!(text.contains("SUBCOMMANDS"), "{text}");
        assert!(text.contains("hytun-server(1)"), "{text}");
    }
}

#[test]
fn man_out_dir_writes_one_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let mandir = dir.path().join("man1");
    let out = hytun(dir.path(), &["man", "--out-dir", mandir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8(out.stdout).unwrap();
    for name in SUBCOMMANDS
        .iter()
        .map(|s| format!("hytun-{s}"))
        .chain(["hytun-help".to_string(), "hytun".to_string()])
    {
        let page = mandir.join(format!("{name}.1"));
        assert!(page.is_file(), "{name}.1 missing");
        assert!(listed.contains(page.to_str().unwrap()), "{listed}");
        let roff = std::fs::read_to_string(&page).unwrap();
        assert!(roff.contains(&format!(".TH {name} 1")), "{name}: {roff}");
        render(&page);
    }
    let server = std::fs::read_to_string(mandir.join("hytun-server.1")).unwrap();
    assert!(server.contains("\\-\\-proxy\\-protocol\\-from"));
    if let Some(text) = render(&mandir.join("hytun-server.1")) {
        assert!(
            text.contains("hytun-server - Run the tunnel server"),
            "{text}"
        );
        assert!(text.contains("--proxy-protocol-from <CIDR>"), "{text}");
    }
}
