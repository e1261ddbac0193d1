//! Environments: extra variables, environment variables and sealed secrets.

use serde::Deserialize;

use super::{Refs, check_ids, check_project, get_or_404, invalid};
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
fn secret_kind_name(key_name: &str) -> (&'static str, &str) {
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

    /// The project's environments.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn environments(&self, access: &Access) -> Result<Vec<(Environment, Vec<SecretInfo>)>> {
        let view = self.store.view()?;
        let envs: Vec<Environment> = view.list(access.project_id())?;
        let keys: Vec<AccessKey> = view.list(access.project_id())?;
        Ok(envs
            .into_iter()
            .map(|e| {
                let secrets = secrets_of(&keys, e.id);
                (e, secrets)
            })
            .collect())
    }

    /// One environment with its secrets' names.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn environment(&self, access: &Access, id: u64) -> Result<(Environment, Vec<SecretInfo>)> {
        let view = self.store.view()?;
        let env: Environment = view.get(access.project_id(), id)?.ok_or(Error::NotFound)?;
        let keys: Vec<AccessKey> = view.list(access.project_id())?;
        let secrets = secrets_of(&keys, id);
        Ok((env, secrets))
    }

    /// Creates an environment with its secrets.
    ///
    /// # Errors
    /// [`Error::Invalid`] for bad fields or secret operations.
    pub async fn create_environment(
        &self,
        access: &Access,
        input: EnvironmentInput,
    ) -> Result<Environment> {
        check_project(input.project_id, access.project_id())?;
        let (name, json, env) = environment_fields(&input)?;
        let ops = self.secret_ops(input.secrets.clone().unwrap_or_default())?;
        let sealed_password = input
            .password
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(|p| self.cipher.seal(p.as_bytes()))
            .unwrap_or_default();
        let access = access.clone();
        self.transact(move |tx| {
            let mut e = Environment {
                id: 0,
                project_id: access.project_id(),
                name: name.clone(),
                json: json.clone(),
                env: env.clone(),
                sealed_password: sealed_password.clone(),
            };
            let id = tx.insert(&mut e)?;
            apply_secret_ops(tx, access.project_id(), id, ops.clone())?;
            tx.record(access.event("environment", id, format!("Environment {} created", e.name)))?;
            Ok(e)
        })
        .await
    }

    /// Replaces an environment and applies its secret operations.
    ///
    /// # Errors
    /// [`Error::Invalid`]; [`Error::NotFound`].
    pub async fn update_environment(
        &self,
        access: &Access,
        id: u64,
        input: EnvironmentInput,
    ) -> Result<()> {
        check_ids(
            input.id,
            id,
            input.project_id,
            access.project_id(),
            "Environment",
        )?;
        let (name, json, env) = environment_fields(&input)?;
        let ops = self.secret_ops(input.secrets.clone().unwrap_or_default())?;
        let new_password = input
            .password
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(|p| self.cipher.seal(p.as_bytes()));
        let access = access.clone();
        self.transact(move |tx| {
            let mut e: Environment = get_or_404(tx, access.project_id(), id)?;
            e.name.clone_from(&name);
            e.json.clone_from(&json);
            e.env.clone_from(&env);
            if let Some(p) = &new_password {
                e.sealed_password.clone_from(p);
            }
            tx.put(&e)?;
            apply_secret_ops(tx, access.project_id(), id, ops.clone())?;
            tx.record(access.event("environment", id, format!("Environment {} updated", e.name)))?;
            Ok(())
        })
        .await
    }

    /// Deletes an environment (with its secrets) unless a template uses it.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InUse`].
    pub async fn delete_environment(&self, access: &Access, id: u64) -> Result<()> {
        let access = access.clone();
        self.transact(move |tx| {
            let e: Environment = get_or_404(tx, access.project_id(), id)?;
            if !environment_refs(tx, access.project_id(), id)?.is_empty() {
                return Err(Error::InUse(
                    "Environment is in use by one or more templates".into(),
                ));
            }
            for key in tx.list::<AccessKey>(access.project_id())? {
                if key.environment_id == Some(id) {
                    tx.remove::<AccessKey>(access.project_id(), key.id)?;
                }
            }
            tx.remove::<Environment>(access.project_id(), id)?;
            tx.record(access.event("environment", id, format!("Environment {} deleted", e.name)))?;
            Ok(())
        })
        .await
    }

    /// What uses environment `id`.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn environment_refs(&self, access: &Access, id: u64) -> Result<Refs> {
        self.environment(access, id)?;
        let p = access.project_id();
        environment_refs(&self.store.view()?, p, id)
    }
}

fn secrets_of(keys: &[AccessKey], env: u64) -> Vec<SecretInfo> {
    keys.iter()
        .filter(|k| k.environment_id == Some(env))
        .map(|k| {
            let (kind, name) = secret_kind_name(&k.name);
            SecretInfo {
                id: k.id,
                kind,
                name: name.to_owned(),
            }
        })
        .collect()
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

fn environment_refs(tx: &impl Lists, p: ProjectId, id: u64) -> Result<Refs> {
    let mut refs = Refs::default();
    for t in tx.list::<Template>(p)? {
        if t.environment_id == Some(id) {
            refs.templates.push((t.id, t.name));
        }
    }
    Ok(refs)
}
