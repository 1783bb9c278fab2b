//! `slicelb completions` and `slicelb man`: shell completion scripts and man pages made from
//! the command line's own definition, so they always list the flags this build takes.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for, e.g. `slicelb completions bash > /etc/bash_completion.d/slicelb`.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory the pages are written to (made if missing), e.g. /usr/local/share/man/man1.
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
}

/// Writes the completion script for `args.shell` to `out`.
pub fn completions(args: &CompletionsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut command = Cli::command();
    let name = command.get_name().to_owned();
    // clap_complete panics on a failed write (`| head`): render first, then write.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("writing the completion script")
}

/// Writes slicelb.1 and a page per subcommand (slicelb-agent.1, …) into `args.out_dir`;
/// returns the files written.
pub fn man_pages(args: &ManArgs) -> anyhow::Result<Vec<PathBuf>> {
    let dir = &args.out_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    pages_in(dir).with_context(|| format!("listing {}", dir.display()))
}

/// The `slicelb*.1` files in `dir`, sorted.
fn pages_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut pages = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|name| name.to_str());
        if name.is_some_and(|name| name.starts_with("slicelb") && name.ends_with(".1")) {
            pages.push(path);
        }
    }
    pages.sort();
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion_script(shell: Shell) -> String {
        let mut script = Vec::new();
        completions(&CompletionsArgs { shell }, &mut script).expect("generated");
        String::from_utf8(script).expect("UTF-8")
    }

    #[test]
    fn completion_scripts_know_the_subcommands_and_flags() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = completion_script(shell);
            // Fish names long flags without their dashes (`-l manifest-dir`).
            for word in ["agent", "services", "manifest-dir", "log-format"] {
                assert!(
                    script.contains(word),
                    "the {shell} script does not mention {word}"
                );
            }
        }
    }

    #[test]
    fn man_pages_are_written_for_the_command_and_each_subcommand() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let out_dir = dir.path().join("man1");
        let written = man_pages(&ManArgs {
            out_dir: out_dir.clone(),
        })
        .expect("written");
        let names: Vec<String> = written
            .iter()
            .map(|path| path.file_name().expect("a file").to_string_lossy().into())
            .collect();
        let mut expected = vec!["slicelb.1".to_owned()];
        expected.extend(
            Cli::command()
                .get_subcommands()
                .map(|sub| format!("slicelb-{}.1", sub.get_name())),
        );
        expected.sort();
        assert_eq!(names, expected);
        let agent = std::fs::read_to_string(out_dir.join("slicelb-agent.1")).expect("readable");
        assert!(
            agent.contains(".TH"),
            "a man page starts with a title: {agent}"
        );
        assert!(
            agent.contains("manifest"),
            "the agent's page lists its flags"
        );
        assert!(agent.contains("SLICELB_IFACE"), "and their variables");
    }
}
