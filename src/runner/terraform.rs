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
//!
//! On a remote runner the same commands run (built by [`launch::Flow`] from the job's
//! [`TerraformJob`], which [`job`] resolves here): the runner reports `waiting_confirmation`,
//! the task waits here as a local one does, and a confirm or reject reaches the runner with
//! its next poll (`remote_exec`).

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use super::exec::{self, Outcome, Prepared, Variables};
use super::launch::{self, Flow};
use super::output::Sink;
use super::{Decision, Inner, Stop};
use crate::agent::protocol::TerraformJob;
use crate::model::{Inventory, Task, TaskId, TaskStatus, Template};

/// Whether `app` runs through this module.
pub(super) fn handles(app: &str) -> bool {
    matches!(app, "terraform" | "tofu")
}

pub use super::launch::Params;

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
        let cwd = launch::terraform_dir(checkout, &self.template.playbook)?;
        let (env, job) = job(self.inner, self.task, self.template, self.inventory, vars)?;
        let flow = Flow::new(&job, &self.task_dir.join(launch::PLAN_FILE));
        Ok(Prepared {
            cwd,
            program: self.template.app.clone(),
            prefix: Vec::new(),
            args: Vec::new(),
            env,
            flow: Some(flow),
            pins: None,
        })
    }
}

/// The environment (`vars.env`, terraform's own variables, secrets as `TF_VAR_*`) and the
/// inputs of the commands of `task`, for this server or a runner.
pub(super) fn job(
    inner: &Inner,
    task: &Task,
    template: &Template,
    inventory: Option<&Inventory>,
    vars: Variables,
) -> Result<(Vec<(String, String)>, TerraformJob), String> {
    let mut env = vars.env;
    env.push(("TF_IN_AUTOMATION".into(), "1".into()));
    env.push(("TF_INPUT".into(), "0".into()));
    let mut secrets: Vec<(String, String)> = vars.var_secrets.into_iter().collect();
    if !task.sealed_secret.is_empty() {
        let plain = inner.host.open_sealed(&task.sealed_secret)?;
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(&plain) {
            secrets.extend(map.into_iter().map(|(k, v)| (k, text(v))));
        }
    }
    env.extend(secrets.into_iter().map(|(k, v)| (format!("TF_VAR_{k}"), v)));
    let workspace = inventory
        .filter(|i| i.kind == "terraform-workspace")
        .map(|i| i.inventory.trim().to_owned())
        .filter(|w| !w.is_empty());
    let (mut args, task_args) = exec::arguments(template, task);
    args.extend(task_args);
    let job = TerraformJob {
        params: Params::from_task(&task.params),
        workspace,
        vars: vars.extra.into_iter().map(|(k, v)| (k, text(v))).collect(),
        args,
    };
    Ok((env, job))
}

/// Moves running task `id` to `waiting_confirmation` (here or on a runner); the task, unless
/// it was not running any more (a stop came first).
pub(super) async fn waiting(inner: &Arc<Inner>, id: TaskId) -> Option<Task> {
    exec::update(inner, id, |t| {
        if t.status != TaskStatus::Running {
            return false;
        }
        t.status = TaskStatus::WaitingConfirmation;
        // No process runs while it waits.
        t.process_group = None;
        true
    })
    .await
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
        let p = self.prepared;
        self.sink
            .line(launch::running_line(&p.program, &p.prefix, &args))
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
        launch::succeeded(self.command(args, stop, deadline).await?)
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
            let code = self.command(flow.plan, stop, &mut deadline).await?;
            if !launch::plan_changes(code)? {
                self.sink.line(launch::NO_CHANGES_LINE).await;
                return Ok(Outcome::Success);
            }
            if flow.params.plan {
                self.sink.line(launch::PLAN_ONLY_LINE).await;
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
        if waiting(self.inner, self.id).await.is_none() {
            // A stop came first.
            return Err(exec::stopped(*stop.borrow()));
        }
        self.sink.line(launch::WAITING_LINE).await;
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
        self.sink.line(launch::CONFIRMED_LINE).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(params: Params, workspace: Option<&str>) -> Flow {
        let job = TerraformJob {
            params,
            workspace: workspace.map(str::to_owned),
            vars: vec![("region".into(), "eu".into())],
            args: vec!["-parallelism=2".into()],
        };
        Flow::new(&job, Path::new("/w/plan.tfplan"))
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
