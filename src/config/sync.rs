//! `[[sync]]` and `[[sync.repo]]` into [`SyncRule`]s: rule names, the
//! upstream each names, the schedule (`interval` or `schedule`, `jitter`),
//! platform filters and each repository's tag filter (regexes compiled,
//! semver ranges parsed, `keep_last` at least 1).

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::time::Duration;

use regex::Regex;
use semver::VersionReq;

use crate::registry::{Platform, RepoName};
pub use crate::sync::{RepoRule, Schedule, SyncRule, TagFilter};

use super::file::{FileSync, FileSyncRepo};
use super::values::parse_duration;
use super::{invalid, ConfigError, UpstreamConfig};

/// The longest rule name: it appears in metric labels and file names.
use crate::sync::{is_valid_rule_name, MAX_RULE_NAME};

impl SyncRule {
    /// Every `[[sync]]`, in order, against the validated upstreams.
    pub(super) fn all_from_file(
        list: Vec<FileSync>,
        upstreams: &[UpstreamConfig],
        warnings: &mut Vec<String>,
    ) -> Result<Vec<SyncRule>, ConfigError> {
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(list.len());
        for (i, s) in list.into_iter().enumerate() {
            let key = |f: &str| format!("sync[{i}].{f}");
            rule_name(&s.name, &key)?;
            if !names.insert(s.name.clone()) {
                return Err(invalid(
                    key("name"),
                    format!("duplicate sync rule {:?}", s.name),
                ));
            }
            rules.push(SyncRule::from_file(s, &key, upstreams, warnings)?);
        }
        Ok(rules)
    }

    fn from_file(
        s: FileSync,
        key: &dyn Fn(&str) -> String,
        upstreams: &[UpstreamConfig],
        warnings: &mut Vec<String>,
    ) -> Result<SyncRule, ConfigError> {
        let Some(upstream) = upstreams.iter().find(|u| u.name == s.upstream) else {
            let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
            return Err(invalid(
                key("upstream"),
                format!(
                    "no [[upstream]] is named {:?} (there are: {})",
                    s.upstream,
                    known.join(", ")
                ),
            ));
        };
        let schedule = schedule(&s, key)?;
        if upstream.offline && schedule.is_some() {
            warnings.push(format!(
                "sync rule {}: upstream {} is offline, so its scheduled runs will fail",
                s.name, upstream.name
            ));
        }
        let platforms = s
            .platforms
            .iter()
            .enumerate()
            .map(|(j, p)| {
                p.parse::<Platform>()
                    .map_err(|e| invalid(key(&format!("platforms[{j}]")), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if s.repo.is_empty() {
            return Err(invalid(
                key("repo"),
                "a rule needs at least one [[sync.repo]]",
            ));
        }
        let mut seen = HashSet::new();
        let mut repos = Vec::with_capacity(s.repo.len());
        for (j, r) in s.repo.into_iter().enumerate() {
            let rkey = |f: &str| key(&format!("repo[{j}].{f}"));
            let repo = RepoRule::from_file(r, &rkey)?;
            if !seen.insert(repo.name.clone()) {
                return Err(invalid(
                    rkey("name"),
                    format!("{} is already in this rule", repo.name),
                ));
            }
            if upstream.library_prefix && repo.name.components().count() == 1 {
                warnings.push(format!(
                    "sync rule {}: repository {:?} is synced as named; upstream {} keeps official images under \"library/{}\"",
                    s.name, repo.name.as_str(), upstream.name, repo.name.as_str()
                ));
            }
            repos.push(repo);
        }
        Ok(SyncRule {
            name: s.name,
            upstream: s.upstream,
            schedule,
            platforms,
            pin: s.pin.unwrap_or(true),
            prune: s.prune.unwrap_or(false),
            signatures: s.signatures.unwrap_or(false),
            repos,
        })
    }
}

/// Letters, digits, `.`, `_` and `-`, starting with a letter or digit (so
/// never `.` or `..` where it names a file).
fn rule_name(name: &str, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    if is_valid_rule_name(name) {
        Ok(())
    } else {
        Err(invalid(
            key("name"),
            format!("{name:?}: use letters, digits, '.', '_' and '-', starting with a letter or digit (at most {MAX_RULE_NAME})"),
        ))
    }
}

/// `interval` or `schedule` (not both), and `jitter` only with one of them.
fn schedule(s: &FileSync, key: &dyn Fn(&str) -> String) -> Result<Option<Schedule>, ConfigError> {
    let jitter = match &s.jitter {
        None => Duration::ZERO,
        Some(j) => parse_duration(&key("jitter"), j)?,
    };
    let schedule = match (&s.interval, &s.schedule) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                key("schedule"),
                "give interval or schedule, not both",
            ))
        }
        (Some(i), None) => {
            let d = parse_duration(&key("interval"), i)?;
            Some(Schedule::every(d, jitter).map_err(|e| invalid(key("interval"), e.to_string()))?)
        }
        (None, Some(c)) => {
            Some(Schedule::cron(c, jitter).map_err(|e| invalid(key("schedule"), e.to_string()))?)
        }
        (None, None) => None,
    };
    if schedule.is_none() && s.jitter.is_some() {
        return Err(invalid(
            key("jitter"),
            "jitter delays scheduled runs: give interval or schedule too",
        ));
    }
    Ok(schedule)
}

impl RepoRule {
    fn from_file(r: FileSyncRepo, key: &dyn Fn(&str) -> String) -> Result<RepoRule, ConfigError> {
        let name: RepoName = r
            .name
            .parse()
            .map_err(|e: crate::registry::ParseError| invalid(key("name"), e.to_string()))?;
        let regexes = |field: &str, list: &[String]| -> Result<Vec<Regex>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(k, re)| {
                    Regex::new(re)
                        .map_err(|e| invalid(key(&format!("{field}[{k}]")), e.to_string()))
                })
                .collect()
        };
        let include = regexes("include", &r.include)?;
        let exclude = regexes("exclude", &r.exclude)?;
        let semver = match &r.semver {
            None => None,
            Some(s) => Some(VersionReq::parse(s).map_err(|e| {
                invalid(
                    key("semver"),
                    format!("{s:?}: {e} (example: \">=3.19, <4\")"),
                )
            })?),
        };
        let keep_last = match r.keep_last {
            None => None,
            Some(n) => Some(
                usize::try_from(n)
                    .ok()
                    .and_then(NonZeroUsize::new)
                    .ok_or_else(|| invalid(key("keep_last"), format!("{n}: keep at least 1")))?,
            ),
        };
        Ok(RepoRule {
            name,
            filter: TagFilter {
                include,
                exclude,
                semver,
                keep_last,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use crate::config::Config;
    use crate::sync::ScheduleKind;

    const UP: &str = "[[upstream]]\nname = \"hub\"\nurl = \"https://registry-1.docker.io\"\n\n[[upstream]]\nname = \"gar\"\nurl = \"https://europe-docker.pkg.dev\"\n";

    fn config(sync: &str) -> Result<Config, String> {
        Config::from_toml(&format!("{UP}{sync}"), None).map_err(|e| e.to_string())
    }

    #[test]
    fn the_issues_example() {
        let c = config(
            r#"
[[sync]]
name = "base"
upstream = "hub"
interval = "6h"
jitter = "10m"
platforms = ["linux/amd64", "linux/arm64"]
pin = true
prune = false
  [[sync.repo]]
  name = "library/nginx"
  include = ['^1\.2[6-9]\.\d+-alpine$']
  exclude = ['-perl$']
  [[sync.repo]]
  name = "library/alpine"
  semver = ">=3.19, <4"
  keep_last = 5

[[sync]]
name = "nightly.gar-2"
upstream = "gar"
schedule = "0 2 * * *"
signatures = true
  [[sync.repo]]
  name = "proj/repo/app"
"#,
        )
        .unwrap();
        assert_eq!(c.sync.len(), 2);
        let base = &c.sync[0];
        assert_eq!(
            (base.name.as_str(), base.upstream.as_str()),
            ("base", "hub")
        );
        let s = base.schedule.as_ref().unwrap();
        assert!(matches!(s.kind, ScheduleKind::Interval(d) if d.as_secs() == 6 * 3600));
        assert_eq!(s.jitter.as_secs(), 600);
        assert_eq!(
            base.platforms
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
            ["linux/amd64", "linux/arm64"]
        );
        assert!(base.pin && !base.prune && !base.signatures);
        assert_eq!(base.repos[0].name.as_str(), "library/nginx");
        let tag = |t: &str| t.parse().unwrap();
        assert!(base.repos[0].filter.matches(&tag("1.27.3-alpine")));
        assert!(!base.repos[0].filter.matches(&tag("1.27.3-alpine-perl")));
        assert!(base.repos[1].filter.matches(&tag("v3.20.1")));
        assert!(!base.repos[1].filter.matches(&tag("3.20.0-rc1")));
        assert_eq!(base.repos[1].filter.keep_last.unwrap().get(), 5);

        let nightly = &c.sync[1];
        let s = nightly.schedule.as_ref().unwrap();
        assert!(matches!(s.kind, ScheduleKind::Cron(_)));
        assert!(s.jitter.is_zero());
        assert!(s.next_after(SystemTime::now(), 0).is_some());
        // Defaults.
        assert!(nightly.pin && !nightly.prune && nightly.signatures);
        assert!(nightly.platforms.is_empty());
        let f = &nightly.repos[0].filter;
        assert!(f.include.is_empty() && f.exclude.is_empty());
        assert!(f.semver.is_none() && f.keep_last.is_none());
    }

    #[test]
    fn no_schedule_runs_on_demand_only() {
        let c = config("[[sync]]\nname = \"manual\"\nupstream = \"hub\"\n[[sync.repo]]\nname = \"library/busybox\"\n").unwrap();
        assert!(c.sync[0].schedule.is_none());
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert!(config("").unwrap().sync.is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        let rule = |extra: &str, repo: &str| {
            format!("[[sync]]\nname = \"r\"\nupstream = \"hub\"\n{extra}[[sync.repo]]\nname = \"library/a\"\n{repo}")
        };
        #[rustfmt::skip]
        let cases: Vec<(String, &str, &str)> = vec![
            (rule("", "") + &rule("", ""), "sync[1].name: ", "duplicate sync rule \"r\""),
            (rule("", "").replace("\"r\"", "\"\""), "sync[0].name: ", "letters, digits"),
            (rule("", "").replace("\"r\"", "\"a b\""), "sync[0].name: ", "letters, digits"),
            (rule("", "").replace("\"r\"", "\"..\""), "sync[0].name: ", "starting with a letter"),
            (rule("", "").replace("\"r\"", "\"a/b\""), "sync[0].name: ", "letters, digits"),
            (rule("", "").replace("\"hub\"", "\"dockerhub\""), "sync[0].upstream: ", "no [[upstream]] is named \"dockerhub\" (there are: hub, gar)"),
            (rule("interval = \"1h\"\nschedule = \"0 2 * * *\"\n", ""), "sync[0].schedule: ", "not both"),
            (rule("jitter = \"10m\"\n", ""), "sync[0].jitter: ", "interval or schedule"),
            (rule("interval = \"1h\"\njitter = \"soon\"\n", ""), "sync[0].jitter: ", "examples"),
            (rule("interval = \"6 hours or so\"\n", ""), "sync[0].interval: ", "examples"),
            (rule("interval = \"0s\"\n", ""), "sync[0].interval: ", "longer than zero"),
            (rule("schedule = \"0 2 * *\"\n", ""), "sync[0].schedule: ", "five fields"),
            (rule("schedule = \"0 0 30 2 *\"\n", ""), "sync[0].schedule: ", "no time that exists"),
            (rule("platforms = [\"linux/amd64\", \"linux\"]\n", ""), "sync[0].platforms[1]: ", "os/architecture"),
            (rule("platforms = [\"linux/x86_64\"]\n", ""), "sync[0].platforms[0]: ", "\"amd64\""),
            (rule("", "include = ['^ok$', '(']\n"), "sync[0].repo[0].include[1]: ", "regex parse error"),
            (rule("", "exclude = ['[z-a]']\n"), "sync[0].repo[0].exclude[0]: ", "regex parse error"),
            (rule("", "semver = \"three\"\n"), "sync[0].repo[0].semver: ", "example"),
            (rule("", "keep_last = 0\n"), "sync[0].repo[0].keep_last: ", "at least 1"),
            (rule("", "keep_last = -3\n"), "sync[0].repo[0].keep_last: ", "at least 1"),
            (rule("", "[[sync.repo]]\nname = \"Library/B\"\n"), "sync[0].repo[1].name: ", ""),
            (rule("", "[[sync.repo]]\nname = \"library/a\"\n"), "sync[0].repo[1].name: ", "already in this rule"),
            ("[[sync]]\nname = \"r\"\nupstream = \"hub\"\n".into(), "sync[0].repo: ", "at least one"),
        ];
        for (text, key, why) in cases {
            let e = config(&text).unwrap_err();
            assert!(
                e.starts_with(key) && e.contains(why),
                "want {key}…{why}, got {e}"
            );
        }
        // Unknown keys are errors, in rules and repositories alike.
        let e = config(&rule("intervall = \"1h\"\n", "")).unwrap_err();
        assert!(e.contains("intervall"), "{e}");
        let e = config(&rule("", "tags = [\"1\"]\n")).unwrap_err();
        assert!(e.contains("tags"), "{e}");
    }

    /// The commented `[[sync]]` example in the shipped `config.toml` is valid
    /// once uncommented, and says what it means.
    #[test]
    fn documented_example_is_valid() {
        let doc = include_str!("../../config.toml");
        let start = doc
            .find("# [[sync]]\n")
            .expect("config.toml documents [[sync]]");
        let end = start + doc[start..].find("\n\n").unwrap();
        let example: String = doc[start..end]
            .lines()
            .map(|l| {
                let l = l.strip_prefix('#').unwrap_or(l);
                l.strip_prefix(' ').unwrap_or(l).to_owned() + "\n"
            })
            .collect();
        let c = Config::from_toml(
            &format!("[[upstream]]\nname = \"dockerhub\"\nurl = \"https://registry-1.docker.io\"\n{example}"),
            None,
        )
        .unwrap();
        let r = &c.sync[0];
        assert_eq!(
            (r.name.as_str(), r.repos.len(), r.platforms.len()),
            ("base", 2, 2)
        );
        let tag = |t: &str| t.parse().unwrap();
        assert!(r.repos[0].filter.matches(&tag("1.27.3-alpine")));
        assert!(!r.repos[0].filter.matches(&tag("1.27.3-alpine-perl")));
        assert!(r.repos[1].filter.matches(&tag("3.19")));
    }

    #[test]
    fn warnings_for_likely_mistakes() {
        let c = Config::from_toml(
            &format!("{UP}library_prefix = true\noffline = true\n[[sync]]\nname = \"r\"\nupstream = \"gar\"\ninterval = \"1h\"\n[[sync.repo]]\nname = \"alpine\"\n"),
            None,
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("offline"), "{:?}", c.warnings);
        assert!(
            c.warnings[1].contains("\"library/alpine\""),
            "{:?}",
            c.warnings
        );
    }
}
