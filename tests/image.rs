//! The container image builds from its build context.
//!
//! The Docker build context is exactly the files `.dockerignore` lets in. This test assembles
//! that context in a temporary directory (the `.dockerignore` rules as Docker applies them:
//! comments, `*`/`?`/`[...]` within a path segment, `**` across segments, a pattern matching a
//! directory matches everything beneath it, `!` exceptions, the last matching pattern wins) and
//! builds the `provisioner` binary there, offline and with the locked dependencies, as the
//! Dockerfile does. It also checks that every `COPY` of the Dockerfile names a path of that
//! context, that no secret or build output is in it, and that the runtime stage copies the
//! binary only.
//!
//! The build keeps its compiled dependencies in `docker-context/` inside the suite's target
//! directory (`build.build-dir`), so only the workspace crates are compiled again on later runs.
//! It must not share the suite's own build directory: the copied workspace crates would get
//! the same artefact names as the real ones and replace them (a build script compiled for the
//! temporary copy would then run for the real workspace). Its final binary goes to a
//! temporary directory, so the suite's `target/debug/provisioner` is never touched.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One token of a compiled pattern.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Lit(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any run of characters other than `/`.
    Any,
    /// `**/` or `**` before more pattern: any number of whole segments, possibly none.
    Deep,
    /// `**` ending the pattern: anything.
    Rest,
    /// `[...]`: ranges (inclusive), negated with a leading `^` or `!`.
    Class(Vec<(char, char)>, bool),
}

#[derive(Debug)]
struct Pattern {
    text: String,
    toks: Vec<Tok>,
    exception: bool,
}

/// Cleans a pattern like Go's `filepath.Clean` does for the cases `.dockerignore` meets:
/// repeated and trailing slashes, `.` segments, a leading `/`.
fn clean(p: &str) -> String {
    let segs: Vec<&str> = p
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if segs.is_empty() {
        ".".into()
    } else {
        segs.join("/")
    }
}

fn compile(text: &str) -> Vec<Tok> {
    let chars: Vec<char> = text.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                toks.push(if i >= chars.len() {
                    Tok::Rest
                } else {
                    Tok::Deep
                });
                continue;
            }
            '*' => toks.push(Tok::Any),
            '?' => toks.push(Tok::One),
            '\\' if i + 1 < chars.len() => {
                i += 1;
                toks.push(Tok::Lit(chars[i]));
            }
            '[' => {
                let mut j = i + 1;
                let negated = matches!(chars.get(j), Some('^' | '!'));
                if negated {
                    j += 1;
                }
                let mut ranges = Vec::new();
                while j < chars.len() && chars[j] != ']' {
                    let lo = chars[j];
                    if chars.get(j + 1) == Some(&'-') && chars.get(j + 2).is_some_and(|c| *c != ']')
                    {
                        ranges.push((lo, chars[j + 2]));
                        j += 3;
                    } else {
                        ranges.push((lo, lo));
                        j += 1;
                    }
                }
                assert!(
                    j < chars.len(),
                    "unterminated [ in .dockerignore pattern {text}"
                );
                toks.push(Tok::Class(ranges, negated));
                i = j;
            }
            c => toks.push(Tok::Lit(c)),
        }
        i += 1;
    }
    toks
}

fn matches(toks: &[Tok], s: &[char]) -> bool {
    let Some((tok, rest)) = toks.split_first() else {
        return s.is_empty();
    };
    match tok {
        Tok::Lit(c) => s.first() == Some(c) && matches(rest, &s[1..]),
        Tok::One => s.first().is_some_and(|c| *c != '/') && matches(rest, &s[1..]),
        Tok::Class(ranges, negated) => {
            s.first().is_some_and(|c| {
                *c != '/' && ranges.iter().any(|(lo, hi)| lo <= c && c <= hi) != *negated
            }) && matches(rest, &s[1..])
        }
        Tok::Any => {
            let run = s.iter().take_while(|c| **c != '/').count();
            (0..=run).any(|n| matches(rest, &s[n..]))
        }
        Tok::Deep => {
            // `(.*/)?`: nothing, or anything up to and including a `/`.
            matches(rest, s) || (0..s.len()).any(|n| s[n] == '/' && matches(rest, &s[n + 1..]))
        }
        Tok::Rest => true,
    }
}

impl Pattern {
    /// The pattern matches the path or one of its parent directories.
    fn matches(&self, path: &str) -> bool {
        let chars: Vec<char> = path.chars().collect();
        if matches(&self.toks, &chars) {
            return true;
        }
        let segs: Vec<&str> = path.split('/').collect();
        (1..segs.len()).any(|n| {
            let parent: Vec<char> = segs[..n].join("/").chars().collect();
            matches(&self.toks, &parent)
        })
    }
}

fn parse_dockerignore(text: &str) -> Vec<Pattern> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (exception, body) = match l.strip_prefix('!') {
                Some(b) => (true, b.trim()),
                None => (false, l),
            };
            let text = clean(body);
            Pattern {
                toks: compile(&text),
                text,
                exception,
            }
        })
        .collect()
}

/// Whether `.dockerignore` excludes the path (relative, `/`-separated): the last matching
/// pattern decides.
fn excluded(patterns: &[Pattern], path: &str) -> bool {
    let mut out = false;
    for p in patterns {
        if p.matches(path) {
            out = !p.exception;
        }
    }
    out
}

/// Whether an exception could let in something beneath an excluded directory.
fn exception_beneath(patterns: &[Pattern], dir: &str) -> bool {
    patterns.iter().any(|p| {
        p.exception
            && (p.text.starts_with(&format!("{dir}/"))
                || p.text
                    .split('/')
                    .next()
                    .is_some_and(|s| s.contains(['*', '?', '['])))
    })
}

/// Every regular file of the build context, relative and `/`-separated, sorted.
fn context_files(root: &Path, patterns: &[Pattern]) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, patterns: &[Pattern], out: &mut Vec<String>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {dir:?}: {e}"));
        for entry in entries {
            let entry = entry.expect("directory entry");
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .expect("beneath the root")
                .to_string_lossy()
                .replace('\\', "/");
            let ty = entry.file_type().expect("file type");
            if ty.is_dir() {
                if !excluded(patterns, &rel) || exception_beneath(patterns, &rel) {
                    walk(root, &path, patterns, out);
                }
            } else if ty.is_file() && !excluded(patterns, &rel) {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, patterns, &mut out);
    out.sort();
    out
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions(dockerfile: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in dockerfile.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_string());
                }
                cur.clear();
            }
        }
    }
    out
}

/// The suite's target directory: the nearest ancestor of this test binary marked as a cargo
/// target directory.
fn suite_target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("no cargo target directory above {exe:?}"))
}

#[test]
fn dockerignore_rules_match_as_docker_does() {
    let p = parse_dockerignore(
        "# comment\n*\n!src/\n!docs/openapi.json\n**/*.pem\n!keep/**\n/lead\n a?c \nx/[0-9]z\n",
    );
    assert_eq!(p.len(), 8, "{p:?}");
    assert!(excluded(&p, "README.md"));
    assert!(excluded(&p, "docs/operations.md"));
    assert!(!excluded(&p, "docs/openapi.json"));
    assert!(
        !excluded(&p, "src/http/mod.rs"),
        "a directory's exception covers its files"
    );
    assert!(
        excluded(&p, "src/tls/key.pem"),
        "`**` spans directories, later rules win"
    );
    assert!(excluded(&p, "k.pem"), "`**/` also matches no directory");
    assert!(!excluded(&p, "keep/a/b.pem"));
    let q = parse_dockerignore("*.md\n/lead\na?c\nx/[0-9]z\n");
    assert!(excluded(&q, "README.md"));
    assert!(!excluded(&q, "docs/README.md"), "`*` does not cross `/`");
    assert!(excluded(&q, "lead/file"), "a leading / is the context root");
    assert!(excluded(&q, "abc") && !excluded(&q, "a/c"));
    assert!(excluded(&q, "x/5z") && !excluded(&q, "x/az"));
}

#[test]
fn the_image_builds_from_its_context() {
    let root = root();
    let patterns = parse_dockerignore(
        &std::fs::read_to_string(root.join(".dockerignore")).expect("read .dockerignore"),
    );
    let files = context_files(&root, &patterns);

    let dir =
        std::env::temp_dir().join(format!("provisioner-image-context-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ctx = dir.join("context");
    for f in &files {
        let to = ctx.join(f);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(root.join(f), &to).unwrap_or_else(|e| panic!("copy {f}: {e}"));
    }

    // Every COPY from the context names something in it; the runtime stage gets the binary only.
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("read Dockerfile");
    let mut stage = String::new();
    let mut runtime_copies = Vec::new();
    for ins in instructions(&dockerfile) {
        let mut words = ins.split_whitespace();
        let keyword = words.next().unwrap_or_default().to_ascii_uppercase();
        if keyword == "FROM" {
            stage = ins.clone();
            continue;
        }
        if keyword != "COPY" && keyword != "ADD" {
            continue;
        }
        if stage.contains("AS runtime") {
            runtime_copies.push(ins.clone());
        }
        let args: Vec<&str> = words.collect();
        if args.iter().any(|a| a.starts_with("--from=")) {
            continue;
        }
        let paths: Vec<&str> = args.into_iter().filter(|a| !a.starts_with("--")).collect();
        assert!(paths.len() >= 2, "{ins}: a source and a destination");
        for src in &paths[..paths.len() - 1] {
            let src = clean(src);
            assert!(
                src == "." || ctx.join(&src).exists(),
                "Dockerfile `{ins}`: {src} is not in the build context (.dockerignore)"
            );
        }
    }
    assert_eq!(
        runtime_copies,
        ["COPY --from=build /usr/local/bin/provisioner /usr/local/bin/provisioner"],
        "the runtime image holds the binary only"
    );

    // The Dockerfile's build, from exactly the context.
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--locked",
            "--offline",
            "--package",
            "provisioner",
            "--bin",
            "provisioner",
        ])
        .current_dir(&ctx)
        .env(
            "CARGO_BUILD_BUILD_DIR",
            suite_target_dir().join("docker-context"),
        )
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .output()
        .expect("run cargo build");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo build in the Docker build context failed:\n{stderr}"
    );
    assert!(dir.join("target/debug/provisioner").is_file(), "{stderr}");

    // Nothing secret, generated or unrelated travels to the Docker daemon.
    for f in &files {
        let name = f.rsplit('/').next().unwrap_or(f);
        assert!(
            !(f.starts_with(".git/")
                || f.starts_with("target/")
                || f.starts_with("tests/")
                || f.starts_with("fuzz/")
                || f.starts_with("crates/lab/tests/")
                || name == ".env"
                || name.starts_with(".env.")
                || name.ends_with(".pem")
                || name.ends_with(".key")),
            "{f} is in the Docker build context"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
