//! Terraform and `OpenTofu` (apps `terraform` and `tofu`), with the argv of Terraform 1.x
//! (≥ 1.4 for `workspace select -or-create`) and `OpenTofu` 1.x, which share it:
//!
//! ```text
//! init -input=false [-upgrade] [-reconfigure]
//! workspace select -or-create=true <workspace>        (terraform-workspace inventory only)
//! plan -input=false -detailed-exitcode [-destroy] -out=<plan file> [-var k=v ...] [template args] [task args]
//! apply -input=false <plan file>
//! ```
//!
//! The app's own `args` go first on every command (e.g. `-chdir=dir`). The plan's exit status
//! says what comes next: 0 (no changes) ends the task `success`; 2 (changes) ends it
//! `success` with `params.plan`, applies at once with `params.auto_approve`, and otherwise
//! leaves the task `waiting_confirmation`: no process runs, the workspace and the plan file
//! stay, and the executor keeps the task's slot (its template runs nothing else meanwhile)
//! until a user confirms (→ `confirmed` → `running`, the plan is applied under a fresh time
//! limit), rejects (→ `stopped`) or stops it, or the server shuts down (→ `error`). After a
//! crash the restart ends such a task `error` like any interrupted one.
//!
//! Extra variables go in as `-var name=value` (as upstream); secrets never reach the command
//! line: `var` secrets and the task's secret variables become `TF_VAR_<name>` in the
//! environment, `env` secrets plain variables.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::watch;

use super::exec::{self, Outcome, Prepared, Variables};
use super::output::Sink;
use super::{Decision, Inner, Stop};
use crate::model::{Inventory, Task, TaskId, TaskStatus, Template};

/// Whether `app` runs through this module.
pub(super) fn handles(app: &str) -> bool {
    matches!(app, "terraform" | "tofu")
}

/// A task's terraform options (its `params`; unknown keys, such as ansible's, are ignored).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
#[allow(clippy::struct_excessive_bools)] // upstream's five independent flags
pub struct Params {
    /// Only plan: the task ends after the plan.
    pub plan: bool,
    /// Plan a destroy.
    pub destroy: bool,
    /// Apply the plan without waiting for a confirmation.
    pub auto_approve: bool,
    /// `init -upgrade`.
    pub upgrade: bool,
    /// `init -reconfigure`.
    pub reconfigure: bool,
}

impl Params {
    /// The params stored on a task (JSON object text; empty = none).
    #[must_use]
    pub fn from_task(params: &str) -> Self {
        serde_json::from_str(params).unwrap_or_default()
    }
}

/// The commands of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Flow {
    params: Params,
    init: Vec<String>,
    workspace: Option<Vec<String>>,
    plan: Vec<String>,
    apply: Vec<String>,
}

impl Flow {
    /// The argv (after the program and the app's own arguments) of every step.
    fn new(
        params: Params,
        workspace: Option<&str>,
        plan_file: &Path,
        vars: &[(String, String)],
        extra_args: Vec<String>,
    ) -> Self {
        let strings = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let mut init = strings(&["init", "-input=false"]);
        if params.upgrade {
            init.push("-upgrade".into());
        }
        if params.reconfigure {
            init.push("-reconfigure".into());
        }
        let workspace = workspace.map(|w| {
            let mut a = strings(&["workspace", "select", "-or-create=true"]);
            a.push(w.to_owned());
            a
        });
        let mut plan = strings(&["plan", "-input=false", "-detailed-exitcode"]);
        if params.destroy {
            plan.push("-destroy".into());
        }
        plan.push(format!("-out={}", plan_file.display()));
        for (k, v) in vars {
            plan.push("-var".into());
            plan.push(format!("{k}={v}"));
        }
        plan.extend(extra_args);
        let mut apply = strings(&["apply", "-input=false"]);
        apply.push(plan_file.display().to_string());
        Self {
            params,
            init,
            workspace,
            plan,
            apply,
        }
    }
}

/// What preparing a terraform run reads.
pub(super) struct Inputs<'a> {
    pub(super) inner: &'a Inner,
    pub(super) task: &'a Task,
    pub(super) template: &'a Template,
    pub(super) inventory: Option<&'a Inventory>,
    pub(super) task_dir: &'a Path,
}

impl Inputs<'_> {
    /// The working directory (the checkout, or the template's `playbook` sub-directory of
    /// it), the environment and the commands.
    pub(super) fn prepare(self, vars: Variables, checkout: &Path) -> Result<Prepared, String> {
        let (task, template) = (self.task, self.template);
        let cwd = if template.playbook.is_empty() {
            checkout.to_path_buf()
        } else {
            exec::inside(checkout, &template.playbook, "directory")?
        };
        if !cwd.is_dir() {
            return Err(format!("{} is not a directory", template.playbook));
        }
        let mut env = vars.env;
        env.push(("TF_IN_AUTOMATION".into(), "1".into()));
        env.push(("TF_INPUT".into(), "0".into()));
        let mut secrets: Vec<(String, String)> = vars.var_secrets.into_iter().collect();
        if !task.sealed_secret.is_empty() {
            let plain = self.inner.host.open_sealed(&task.sealed_secret)?;
            if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(&plain) {
                secrets.extend(map.into_iter().map(|(k, v)| (k, text(v))));
            }
        }
        env.extend(secrets.into_iter().map(|(k, v)| (format!("TF_VAR_{k}"), v)));
        let vars: Vec<(String, String)> =
            vars.extra.into_iter().map(|(k, v)| (k, text(v))).collect();
        let workspace = self
            .inventory
            .filter(|i| i.kind == "terraform-workspace")
            .map(|i| i.inventory.trim())
            .filter(|w| !w.is_empty());
        let (template_args, task_args) = exec::arguments(template, task);
        let mut extra_args = template_args;
        extra_args.extend(task_args);
        let flow = Flow::new(
            Params::from_task(&task.params),
            workspace,
            &self.task_dir.join("plan.tfplan"),
            &vars,
            extra_args,
        );
        Ok(Prepared {
            cwd,
            program: template.app.clone(),
            prefix: Vec::new(),
            args: Vec::new(),
            env,
            flow: Some(flow),
            pins: None,
        })
    }
}

/// A variable's value as text: strings as they are, anything else as JSON (which terraform
/// reads as HCL).
fn text(v: serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

/// One task's run through its commands.
pub(super) struct Run<'a> {
    pub(super) inner: &'a Arc<Inner>,
    pub(super) id: TaskId,
    pub(super) sink: &'a Sink,
    pub(super) prepared: &'a Prepared,
    pub(super) max_secs: u64,
}

impl Run<'_> {
    /// Runs `args`; `Ok(exit code)` when it ended by itself, the outcome otherwise.
    async fn command(
        &self,
        args: Vec<String>,
        stop: &mut watch::Receiver<Option<Stop>>,
        deadline: &mut std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> Result<i32, Outcome> {
        let shown: Vec<&str> = std::iter::once(self.prepared.program.as_str())
            .chain(self.prepared.prefix.iter().map(String::as_str))
            .chain(args.iter().map(String::as_str))
            .collect();
        self.sink
            .line(format!("Running: {}", shown.join(" ")))
            .await;
        let status = exec::run_command(
            self.inner,
            self.id,
            self.prepared,
            args,
            stop,
            deadline,
            self.sink,
            self.max_secs,
        )
        .await?;
        match status {
            Ok(s) => Ok(s.code().unwrap_or(-1)),
            Err(e) => Err(Outcome::Failed(format!("Running app failed: {e}"))),
        }
    }

    /// Runs `args`, which must succeed.
    async fn must(
        &self,
        args: Vec<String>,
        stop: &mut watch::Receiver<Option<Stop>>,
        deadline: &mut std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> Result<(), Outcome> {
        match self.command(args, stop, deadline).await? {
            0 => Ok(()),
            code => Err(Outcome::Failed(format!(
                "Running app failed: exit status {code}"
            ))),
        }
    }

    /// init, workspace, plan, then (as the params and the plan say) apply.
    pub(super) async fn steps(
        self,
        flow: Flow,
        stop: &mut watch::Receiver<Option<Stop>>,
        mut deadline: std::pin::Pin<&mut tokio::time::Sleep>,
        decision: &watch::Sender<Decision>,
    ) -> Outcome {
        let outcome = async {
            self.must(flow.init, stop, &mut deadline).await?;
            if let Some(ws) = flow.workspace {
                self.must(ws, stop, &mut deadline).await?;
            }
            match self.command(flow.plan, stop, &mut deadline).await? {
                0 => {
                    self.sink.line("No changes: nothing to apply").await;
                    return Ok(Outcome::Success);
                }
                2 => {}
                code => {
                    return Err(Outcome::Failed(format!(
                        "Running app failed: exit status {code}"
                    )));
                }
            }
            if flow.params.plan {
                self.sink.line("Plan only: not applied").await;
                return Ok(Outcome::Success);
            }
            if !flow.params.auto_approve {
                self.confirmation(stop, decision).await?;
                deadline.as_mut().reset(exec::deadline_after(self.max_secs));
            }
            self.must(flow.apply, stop, &mut deadline).await?;
            Ok(Outcome::Success)
        }
        .await;
        outcome.unwrap_or_else(|o| o)
    }

    /// Leaves the task `waiting_confirmation` until a user confirms it (then it is `running`
    /// again) or rejects or stops it, or the server shuts down.
    async fn confirmation(
        &self,
        stop: &mut watch::Receiver<Option<Stop>>,
        decision: &watch::Sender<Decision>,
    ) -> Result<(), Outcome> {
        // First the runner learns that a decision is awaited, then the store (which is what
        // confirm and reject check): a confirmation can never come before it is awaited. Under
        // the runner's lock, so that a shutdown either sees it waiting or is seen here.
        {
            let state = self.inner.lock();
            if state.shutting_down {
                return Err(Outcome::ShutDown);
            }
            decision.send_replace(Decision::Awaiting);
        }
        let waiting = exec::update(self.inner, self.id, |t| {
            if t.status != TaskStatus::Running {
                return false;
            }
            t.status = TaskStatus::WaitingConfirmation;
            // No process runs while it waits.
            t.process_group = None;
            true
        })
        .await;
        if waiting.is_none() {
            // A stop came first.
            return Err(exec::stopped(*stop.borrow()));
        }
        self.sink
            .line("Waiting for confirmation: confirm to apply the plan, or reject it")
            .await;
        let mut decided = decision.subscribe();
        let confirmed = tokio::select! {
            d = decided.wait_for(|d| matches!(d, Decision::Confirmed | Decision::Rejected)) => {
                d.is_ok_and(|d| *d == Decision::Confirmed)
            }
            why = stop.wait_for(Option::is_some) => {
                return Err(exec::stopped(why.ok().and_then(|w| *w)));
            }
        };
        if !confirmed {
            return Err(Outcome::Rejected);
        }
        let running = exec::update(self.inner, self.id, |t| {
            if t.status != TaskStatus::Confirmed {
                return false;
            }
            t.status = TaskStatus::Running;
            true
        })
        .await;
        if running.is_none() {
            return Err(exec::stopped(*stop.borrow()));
        }
        self.sink.line("Plan confirmed: applying").await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(params: Params, workspace: Option<&str>) -> Flow {
        Flow::new(
            params,
            workspace,
            Path::new("/w/plan.tfplan"),
            &[("region".into(), "eu".into())],
            vec!["-parallelism=2".into()],
        )
    }

    #[test]
    fn the_commands_follow_the_params() {
        let f = argv(Params::default(), None);
        assert_eq!(f.init, ["init", "-input=false"]);
        assert_eq!(f.workspace, None);
        assert_eq!(
            f.plan,
            [
                "plan",
                "-input=false",
                "-detailed-exitcode",
                "-out=/w/plan.tfplan",
                "-var",
                "region=eu",
                "-parallelism=2"
            ]
        );
        assert_eq!(f.apply, ["apply", "-input=false", "/w/plan.tfplan"]);
        let all = Params {
            plan: false,
            destroy: true,
            auto_approve: true,
            upgrade: true,
            reconfigure: true,
        };
        let f = argv(all, Some("staging"));
        assert_eq!(f.init, ["init", "-input=false", "-upgrade", "-reconfigure"]);
        assert_eq!(
            f.workspace.as_deref(),
            Some(
                &[
                    "workspace".to_owned(),
                    "select".into(),
                    "-or-create=true".into(),
                    "staging".into()
                ][..]
            )
        );
        assert_eq!(f.plan[3], "-destroy");
    }

    #[test]
    fn params_ignore_what_they_do_not_know() {
        assert_eq!(Params::from_task(""), Params::default());
        assert_eq!(
            Params::from_task(r#"{"plan":true,"debug":true}"#),
            Params {
                plan: true,
                ..Params::default()
            }
        );
        assert_eq!(Params::from_task("{bad"), Params::default());
    }
}
