//! Environments: extra variables, environment variables and sealed secrets.

use std::collections::HashMap;

use serde::Deserialize;

use super::{Names, ProjectResource, Refs, Target, body, invalid, users};
use crate::model::{AccessKey, Environment, KeyKind, KeySecret, ProjectId, Template};
use crate::service::projects::Access;
use crate::service::{Error, Result, Services, validate};
use crate::store::{Lists, Tx};
/// One secret operation in an environment body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SecretInput {
    /// The secret's id (update, delete).
    pub id: Option<u64>,
    /// `var` (extra variable) or `env` (environment variable).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Variable name.
    pub name: Option<String>,
    /// The value (create, update).
    pub secret: Option<String>,
    /// `create`, `update` or `delete`.
    pub operation: Option<String>,
}

/// An environment body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EnvironmentInput {
    /// Must equal the URL on update.
    pub id: Option<u64>,
    /// Display name.
    pub name: Option<String>,
    /// Must equal the URL's project when given.
    pub project_id: Option<u64>,
    /// Legacy vault password (sealed, never returned).
    pub password: Option<String>,
    /// Extra variables: a JSON object, as text.
    pub json: Option<String>,
    /// Environment variables: a JSON object of strings, as text.
    pub env: Option<String>,
    /// Secret operations.
    #[serde(deserialize_with = "crate::service::input::objects")]
    pub secrets: Option<Vec<SecretInput>>,
}

/// A secret of an environment as listed (never its value).
#[derive(Debug, Clone)]
pub struct SecretInfo {
    /// Id (of the underlying key).
    pub id: u64,
    /// `var` or `env`.
    pub kind: &'static str,
    /// Variable name.
    pub name: String,
}

/// A parsed secret name: `var.NAME` / `env.NAME` as upstream stores them.
#[must_use]
pub fn secret_kind_name(key_name: &str) -> (&'static str, &str) {
    match key_name.split_once('.') {
        Some(("env", n)) => ("env", n),
        Some((_, n)) => ("var", n),
        None => ("var", key_name),
    }
}

fn environment_fields(input: &EnvironmentInput) -> Result<(String, String, Option<String>)> {
    let name = input.name.clone().unwrap_or_default();
    if name.trim().is_empty() {
        return invalid("Environment name can not be empty");
    }
    validate::name(&name, "Environment name").map_err(Error::Invalid)?;
    let json = input
        .json
        .clone()
        .filter(|j| !j.trim().is_empty())
        .unwrap_or_else(|| "{}".into());
    match serde_json::from_str::<serde_json::Value>(&json) {
        Ok(serde_json::Value::Object(_)) => {}
        _ => return invalid("Extra variables must be valid JSON"),
    }
    let env = input.env.clone().filter(|e| !e.trim().is_empty());
    if let Some(env) = &env {
        match serde_json::from_str::<serde_json::Value>(env) {
            Ok(serde_json::Value::Object(map))
                if map.values().all(serde_json::Value::is_string) => {}
            _ => return invalid("Environment variables must be valid JSON (an object of strings)"),
        }
    }
    Ok((name.trim().to_owned(), json, env))
}

fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Validated secret operations, sealed and ready to apply.
#[derive(Clone)]
enum SecretOp {
    Create {
        kind: &'static str,
        name: String,
        sealed: Vec<u8>,
    },
    Update {
        id: u64,
        name: Option<String>,
        sealed: Option<Vec<u8>>,
    },
    Delete {
        id: u64,
    },
}

impl Services {
    fn secret_ops(&self, inputs: Vec<SecretInput>) -> Result<Vec<SecretOp>> {
        let mut ops = Vec::new();
        for s in inputs {
            let op = s.operation.clone().unwrap_or_default();
            let seal = |v: &str| {
                self.seal_secret(
                    KeyKind::String,
                    &KeySecret {
                        string: v.to_owned(),
                        ..KeySecret::default()
                    },
                )
            };
            let check_name = |kind: &str, name: &str| -> Result<()> {
                if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
                    return invalid(format!("secret name {name:?} is not valid"));
                }
                if kind == "env" && !is_env_var_name(name) {
                    return invalid(format!(
                        "secret name {name:?} is not a valid environment variable name"
                    ));
                }
                Ok(())
            };
            match op.as_str() {
                "create" => {
                    let kind = match s.kind.as_deref().unwrap_or("var") {
                        "env" => "env",
                        "var" | "" => "var",
                        other => {
                            return invalid(format!(
                                "secret type must be var or env, not {other:?}"
                            ));
                        }
                    };
                    let name = s.name.clone().unwrap_or_default();
                    check_name(kind, &name)?;
                    let secret = s.secret.clone().unwrap_or_default();
                    ops.push(SecretOp::Create {
                        kind,
                        name,
                        sealed: seal(&secret),
                    });
                }
                "update" => {
                    let id =
                        s.id.ok_or_else(|| Error::Invalid("secret update needs an id".into()))?;
                    let name = s.name.clone().filter(|n| !n.is_empty());
                    let sealed = s.secret.as_deref().filter(|v| !v.is_empty()).map(seal);
                    ops.push(SecretOp::Update { id, name, sealed });
                }
                "delete" => {
                    let id =
                        s.id.ok_or_else(|| Error::Invalid("secret delete needs an id".into()))?;
                    ops.push(SecretOp::Delete { id });
                }
                // Entries without an operation are the listed secrets echoed back: unchanged.
                "" => {}
                other => return invalid(format!("unknown secret operation {other:?}")),
            }
        }
        Ok(ops)
    }

    /// The secrets (names, never values) of the project's environments, by environment id.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn environment_secrets(&self, access: &Access) -> Result<HashMap<u64, Vec<SecretInfo>>> {
        let keys: Vec<AccessKey> = self.store.view()?.list(access.project_id())?;
        let mut secrets: HashMap<u64, Vec<SecretInfo>> = HashMap::new();
        for k in keys {
            let Some(env) = k.environment_id else {
                continue;
            };
            let (kind, name) = secret_kind_name(&k.name);
            secrets.entry(env).or_default().push(SecretInfo {
                id: k.id,
                kind,
                name: name.to_owned(),
            });
        }
        Ok(secrets)
    }
}

/// A validated environment body.
pub struct EnvironmentFields {
    project: ProjectId,
    name: String,
    json: String,
    env: Option<String>,
    /// Sealed; `None` keeps the stored one.
    password: Option<Vec<u8>>,
    ops: Vec<SecretOp>,
}

impl ProjectResource for Environment {
    body!(EnvironmentInput);
    type Fields = EnvironmentFields;
    const NAMES: Names = Names::new("environment", "Environment");

    fn fields(
        services: &Services,
        input: EnvironmentInput,
        to: Target,
    ) -> Result<EnvironmentFields> {
        let (name, json, env) = environment_fields(&input)?;
        let ops = services.secret_ops(input.secrets.unwrap_or_default())?;
        let password = input
            .password
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(|p| services.cipher.seal(p.as_bytes()));
        Ok(EnvironmentFields {
            project: to.project,
            name,
            json,
            env,
            password,
            ops,
        })
    }

    fn record(_tx: &Tx<'_>, fields: &EnvironmentFields, current: Option<Self>) -> Result<Self> {
        let mut e = current.unwrap_or_else(|| Environment {
            id: 0,
            project_id: fields.project,
            name: String::new(),
            json: String::new(),
            env: None,
            sealed_password: Vec::new(),
        });
        e.name.clone_from(&fields.name);
        e.json.clone_from(&fields.json);
        e.env.clone_from(&fields.env);
        if let Some(p) = &fields.password {
            e.sealed_password.clone_from(p);
        }
        Ok(e)
    }

    fn written(tx: &Tx<'_>, project: ProjectId, id: u64, fields: &EnvironmentFields) -> Result<()> {
        apply_secret_ops(tx, project, id, fields.ops.clone())
    }

    fn refs(lists: &impl Lists, p: ProjectId, id: u64) -> Result<Refs> {
        Ok(Refs {
            templates: users(lists, p, |t: &Template| t.environment_id == Some(id))?,
            ..Refs::default()
        })
    }

    /// Its secrets go with it.
    fn removing(&self, tx: &Tx<'_>) -> Result<()> {
        for key in tx.list::<AccessKey>(self.project_id)? {
            if key.environment_id == Some(self.id) {
                tx.remove::<AccessKey>(self.project_id, key.id)?;
            }
        }
        Ok(())
    }
}

fn apply_secret_ops(tx: &Tx<'_>, p: ProjectId, env: u64, ops: Vec<SecretOp>) -> Result<()> {
    for op in ops {
        match op {
            SecretOp::Create { kind, name, sealed } => {
                let taken = tx
                    .list::<AccessKey>(p)?
                    .into_iter()
                    .any(|k| k.environment_id == Some(env) && k.name == format!("{kind}.{name}"));
                if taken {
                    return invalid(format!(
                        "secret {name:?} already exists in this environment"
                    ));
                }
                let mut key = AccessKey {
                    id: 0,
                    project_id: p,
                    name: format!("{kind}.{name}"),
                    kind: KeyKind::String,
                    sealed_secret: sealed,
                    environment_id: Some(env),
                };
                tx.insert(&mut key)?;
            }
            SecretOp::Update { id, name, sealed } => {
                let mut key = owned_secret(tx, p, env, id)?;
                if let Some(name) = name {
                    let (kind, _) = secret_kind_name(&key.name);
                    if name.is_empty()
                        || name.chars().any(char::is_control)
                        || (kind == "env" && !is_env_var_name(&name))
                    {
                        return invalid(format!("secret name {name:?} is not valid"));
                    }
                    key.name = format!("{kind}.{name}");
                }
                if let Some(sealed) = sealed {
                    key.sealed_secret = sealed;
                }
                tx.put(&key)?;
            }
            SecretOp::Delete { id } => {
                owned_secret(tx, p, env, id)?;
                tx.remove::<AccessKey>(p, id)?;
            }
        }
    }
    Ok(())
}

/// A secret of environment `env`; anything else (another environment's secret, a plain key)
/// is refused — upstream's inverted check let any key of the project be deleted here.
fn owned_secret(tx: &Tx<'_>, p: ProjectId, env: u64, id: u64) -> Result<AccessKey> {
    tx.get::<AccessKey>(p, id)?
        .filter(|k| k.environment_id == Some(env))
        .ok_or_else(|| Error::Invalid(format!("secret {id} does not belong to this environment")))
}
