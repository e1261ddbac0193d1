//! Apps (`/api/apps`): what a template runs. The built-in apps are upstream's; an admin may
//! change any app's `path`, `args`, `priority`, `active` (and its display fields) or add an
//! app of their own. Changes are server options `apps.<id>.<field>`, as upstream stores them,
//! so an app is its defaults with its options laid over them; deleting an app removes its
//! options (a built-in one is back at its defaults, an own one is gone).
//!
//! A built-in app is active by default when its executable was on `PATH` when the server
//! started (and every app named by `--extra-apps` is); a template may only use an active app.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Error, Result, Services};

/// A built-in app: id, default priority, the executable whose presence makes it active.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// App id.
    pub id: &'static str,
    /// Default priority (higher first in lists).
    pub priority: i64,
    /// The executable the runner starts for it (unless its `path` says otherwise).
    pub program: &'static str,
}

/// The built-in apps, as upstream.
pub const BUILTIN: &[Builtin] = &[
    Builtin {
        id: "ansible",
        priority: 1000,
        program: "ansible-playbook",
    },
    Builtin {
        id: "terraform",
        priority: 900,
        program: "terraform",
    },
    Builtin {
        id: "tofu",
        priority: 800,
        program: "tofu",
    },
    Builtin {
        id: "bash",
        priority: 700,
        program: "bash",
    },
    Builtin {
        id: "powershell",
        priority: 600,
        program: "powershell",
    },
    Builtin {
        id: "python",
        priority: 500,
        program: "python3",
    },
];

/// Option keys of apps start with this.
const OPTION_PREFIX: &str = "apps.";
/// Longest app id.
const MAX_ID_LEN: usize = 64;
/// Longest display field, path or argument.
const MAX_FIELD_LEN: usize = 4096;
/// Most arguments an app may have.
const MAX_ARGS: usize = 100;

/// An app as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct App {
    /// Its id (what templates name in `app`).
    pub id: String,
    /// Whether templates may use it.
    pub active: bool,
    /// Sort key, highest first.
    pub priority: i64,
    /// Display title.
    pub title: String,
    /// Display icon.
    pub icon: String,
    /// Display colour.
    pub color: String,
    /// Display colour in the dark theme.
    pub dark_color: String,
    /// The executable to start instead of the default one (`""` = the default).
    pub path: String,
    /// Arguments put before Forge's own ones.
    pub args: Option<Vec<String>>,
}

impl App {
    fn new(id: &str, priority: i64, active: bool) -> Self {
        Self {
            id: id.to_owned(),
            active,
            priority,
            title: String::new(),
            icon: String::new(),
            color: String::new(),
            dark_color: String::new(),
            path: String::new(),
            args: None,
        }
    }

    /// Lays option `field` = `value` over the app; unknown fields and unreadable values are
    /// left alone (an option may have been set by hand through `/api/options`).
    fn set(&mut self, field: &str, value: &str) {
        match field {
            "title" => value.clone_into(&mut self.title),
            "icon" => value.clone_into(&mut self.icon),
            "color" => value.clone_into(&mut self.color),
            "dark_color" => value.clone_into(&mut self.dark_color),
            "path" => value.clone_into(&mut self.path),
            "args" => {
                if let Ok(args) = serde_json::from_str::<Option<Vec<String>>>(value) {
                    self.args = args;
                }
            }
            "priority" => {
                if let Ok(p) = value.trim().parse() {
                    self.priority = p;
                }
            }
            "active" => match value.trim() {
                "true" => self.active = true,
                "false" => self.active = false,
                _ => {}
            },
            _ => {}
        }
    }

    /// The options that store this app.
    fn options(&self) -> Vec<(String, String)> {
        let args = serde_json::to_string(&self.args).unwrap_or_else(|_| "null".into());
        [
            ("title", self.title.clone()),
            ("icon", self.icon.clone()),
            ("color", self.color.clone()),
            ("dark_color", self.dark_color.clone()),
            ("path", self.path.clone()),
            ("args", args),
            ("priority", self.priority.to_string()),
            ("active", self.active.to_string()),
        ]
        .into_iter()
        .map(|(field, value)| (format!("{OPTION_PREFIX}{}.{field}", self.id), value))
        .collect()
    }
}

/// A `PUT /api/apps/{id}` body: a field left out keeps its current value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AppInput {
    /// Display title.
    pub title: Option<String>,
    /// Display icon.
    pub icon: Option<String>,
    /// Display colour.
    pub color: Option<String>,
    /// Display colour in the dark theme.
    pub dark_color: Option<String>,
    /// Executable (absolute path, or a name looked up on `PATH`; `""` = the default).
    pub path: Option<String>,
    /// Arguments before Forge's own: an array of strings, or `null` for none (`None` only
    /// when the field is left out).
    #[serde(deserialize_with = "present")]
    pub args: Option<serde_json::Value>,
    /// Sort key.
    pub priority: Option<i64>,
    /// Whether templates may use it.
    pub active: Option<bool>,
}

/// A field that is there, even as `null` (a missing one is `None` through the default).
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// `args` of a body: an array of at most [`MAX_ARGS`] strings without NUL, or `null`.
fn parse_args(value: serde_json::Value) -> Result<Option<Vec<String>>> {
    let bad = || {
        Error::Invalid(format!(
            "args must be null or an array of at most {MAX_ARGS} strings of at most \
             {MAX_FIELD_LEN} bytes without NUL"
        ))
    };
    if value.is_null() {
        return Ok(None);
    }
    let args: Vec<String> = serde_json::from_value(value).map_err(|_| bad())?;
    if args.len() > MAX_ARGS
        || args
            .iter()
            .any(|a| a.len() > MAX_FIELD_LEN || a.contains('\0'))
    {
        return Err(bad());
    }
    Ok(Some(args))
}

/// A `POST /api/apps/{id}/active` body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ActiveInput {
    /// The new state (required).
    pub active: Option<bool>,
}

/// What the server found at start: which built-in apps' executables were on `PATH`, and the
/// apps configured active whatever `PATH` holds.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    found: BTreeSet<&'static str>,
    configured: Vec<String>,
}

impl Defaults {
    /// Looks every built-in app's executable up on `path` (a `PATH` value); `configured`
    /// apps are active whatever it holds.
    #[must_use]
    pub fn discover(path: Option<&std::ffi::OsStr>, configured: &[String]) -> Self {
        let found = BUILTIN
            .iter()
            .filter(|b| path.is_some_and(|p| on_path(p, b.program)))
            .map(|b| b.id)
            .collect();
        Self {
            found,
            configured: configured.iter().filter(|c| valid_id(c)).cloned().collect(),
        }
    }

    fn apps(&self) -> BTreeMap<String, App> {
        let mut apps: BTreeMap<String, App> = BUILTIN
            .iter()
            .map(|b| {
                let active = self.found.contains(b.id) || self.configured.iter().any(|c| c == b.id);
                (b.id.to_owned(), App::new(b.id, b.priority, active))
            })
            .collect();
        for id in &self.configured {
            apps.entry(id.clone())
                .or_insert_with(|| App::new(id, 0, true));
        }
        apps
    }
}

/// Whether an executable file named `program` is in one of the directories of `path`.
fn on_path(path: &std::ffi::OsStr, program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path).any(|dir| {
        std::fs::metadata(dir.join(program))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// `^[A-Za-z0-9_]{1,64}$`: an id that makes a valid option key part.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn check_text(value: &str, what: &str) -> Result<()> {
    if value.len() > MAX_FIELD_LEN || value.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "{what} must be at most {MAX_FIELD_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

fn check_path(path: &str) -> Result<()> {
    check_text(path, "path")?;
    if !path.is_empty() && path.contains('/') && !Path::new(path).is_absolute() {
        return Err(Error::Invalid(
            "path must be an absolute path or an executable's name looked up on PATH".into(),
        ));
    }
    Ok(())
}

impl Services {
    /// Every app (built-in, configured, and added by an admin), highest priority first (ties
    /// by id).
    ///
    /// # Errors
    /// Storage failures only.
    pub fn apps(&self) -> Result<Vec<App>> {
        let mut apps = self.app_defaults.apps();
        for (key, value) in self.store.options()? {
            let Some((id, field)) = key
                .strip_prefix(OPTION_PREFIX)
                .and_then(|rest| rest.split_once('.'))
            else {
                continue;
            };
            if !valid_id(id) {
                continue;
            }
            apps.entry(id.to_owned())
                .or_insert_with(|| App::new(id, 0, false))
                .set(field, &value);
        }
        let mut apps: Vec<App> = apps.into_values().collect();
        apps.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
        Ok(apps)
    }

    /// App `id`.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn app(&self, id: &str) -> Result<App> {
        self.apps()?
            .into_iter()
            .find(|a| a.id == id)
            .ok_or(Error::NotFound)
    }

    /// Creates or changes app `id` (fields left out keep their value; a new app starts
    /// inactive with priority 0), durably.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an id that is not `^[A-Za-z0-9_]{1,64}$` or a bad field.
    pub async fn put_app(&self, id: &str, input: AppInput) -> Result<App> {
        if !valid_id(id) {
            return Err(Error::Invalid(format!(
                "app id must be 1 to {MAX_ID_LEN} letters, digits or '_': {id:?}"
            )));
        }
        let mut app = match self.app(id) {
            Ok(app) => app,
            Err(Error::NotFound) => App::new(id, 0, false),
            Err(e) => return Err(e),
        };
        for (value, field, what) in [
            (input.title, &mut app.title, "title"),
            (input.icon, &mut app.icon, "icon"),
            (input.color, &mut app.color, "color"),
            (input.dark_color, &mut app.dark_color, "dark_color"),
        ] {
            if let Some(v) = value {
                check_text(&v, what)?;
                *field = v;
            }
        }
        if let Some(path) = input.path {
            check_path(&path)?;
            app.path = path;
        }
        if let Some(args) = input.args {
            app.args = parse_args(args)?;
        }
        if let Some(p) = input.priority {
            app.priority = p;
        }
        if let Some(a) = input.active {
            app.active = a;
        }
        self.store
            .replace_options(Some(&format!("{OPTION_PREFIX}{id}.")), app.options())
            .await?;
        Ok(app)
    }

    /// Activates or deactivates app `id`, durably.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Invalid`] without `active`.
    pub async fn set_app_active(&self, id: &str, input: ActiveInput) -> Result<App> {
        let active = input
            .active
            .ok_or_else(|| Error::Invalid("active is required (true or false)".into()))?;
        let mut app = self.app(id)?;
        app.active = active;
        self.store
            .replace_options(
                None,
                vec![(format!("{OPTION_PREFIX}{id}.active"), active.to_string())],
            )
            .await?;
        Ok(app)
    }

    /// Deletes app `id`'s changes: a built-in (or configured) app is back at its defaults, an
    /// admin's own app is gone.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub async fn delete_app(&self, id: &str) -> Result<()> {
        self.app(id)?;
        self.store
            .replace_options(Some(&format!("{OPTION_PREFIX}{id}.")), Vec::new())
            .await?;
        Ok(())
    }

    /// Ids of the active apps.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn active_apps(&self) -> Result<BTreeSet<String>> {
        Ok(self
            .apps()?
            .into_iter()
            .filter(|a| a.active)
            .map(|a| a.id)
            .collect())
    }

    /// `Ok` when templates may use app `id`.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the app when it is unknown or not active.
    pub fn require_active_app(&self, id: &str) -> Result<()> {
        match self.app(id) {
            Ok(app) if app.active => Ok(()),
            Ok(_) => Err(inactive(id)),
            Err(Error::NotFound) => Err(Error::Invalid(format!("Invalid app id: {id}"))),
            Err(e) => Err(e),
        }
    }

    /// What the runner starts for app `id`: the executable (`None` = the app's default) and
    /// the arguments before Forge's own.
    #[must_use]
    pub fn app_command(&self, id: &str) -> (Option<String>, Vec<String>) {
        match self.app(id) {
            Ok(app) => (
                Some(app.path).filter(|p| !p.is_empty()),
                app.args.unwrap_or_default(),
            ),
            Err(_) => (None, Vec::new()),
        }
    }
}

/// The error for a template or launch naming an inactive app.
#[must_use]
pub fn inactive(id: &str) -> Error {
    Error::Invalid(format!(
        "app {id} is not active (its executable was not found when the server started); \
         an administrator can activate it with POST /api/apps/{id}/active"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_active_when_their_executable_is_on_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, mode) in [("terraform", 0o755), ("tofu", 0o644)] {
            let file = dir.path().join(name);
            std::fs::write(&file, "#!/bin/sh\n").expect("write");
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .expect("chmod");
        }
        std::fs::create_dir(dir.path().join("bash")).expect("a directory is no executable");
        let path = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).expect("path");
        let d = Defaults::discover(Some(&path), &["python".into(), "my_tool".into()]);
        let apps = d.apps();
        let active: Vec<&str> = apps
            .values()
            .filter(|a| a.active)
            .map(|a| a.id.as_str())
            .collect();
        assert_eq!(active, ["my_tool", "python", "terraform"]);
        assert_eq!(apps["ansible"].priority, 1000);
        assert_eq!(apps["my_tool"].priority, 0);
        assert!(
            Defaults::discover(None, &[])
                .apps()
                .values()
                .all(|a| !a.active)
        );
    }

    #[test]
    fn options_lay_over_defaults_and_round_trip() {
        let mut app = App::new("x", 1, false);
        app.args = Some(vec!["-a".into(), "b c".into()]);
        app.path = "/opt/x".into();
        app.active = true;
        let mut back = App::new("x", 0, false);
        for (key, value) in app.options() {
            let field = key.strip_prefix("apps.x.").expect("prefix");
            back.set(field, &value);
        }
        assert_eq!(back, app);
        back.set("priority", "not a number");
        back.set("active", "yes");
        back.set("args", "{");
        assert_eq!(back, app, "unreadable values are ignored");
    }

    #[test]
    fn ids_and_paths() {
        for ok in ["a", "my_app", "A9", &"a".repeat(MAX_ID_LEN)] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", "a.b", "a-b", "a/b", "é", &"a".repeat(MAX_ID_LEN + 1)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        assert!(check_path("").is_ok());
        assert!(check_path("tf1.9").is_ok());
        assert!(check_path("/usr/local/bin/terraform").is_ok());
        assert!(check_path("bin/terraform").is_err());
        assert!(check_path("a\nb").is_err());
    }
}
