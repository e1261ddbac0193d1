//! A stand-in for `terraform`/`tofu` (a bash script; the real binaries are not installed
//! here), shared by the local (`tests/terraform.rs`) and remote runner (`tests/runners.rs`)
//! suites.

use std::path::Path;

/// The stand-in: one `<n>.argv` file per call in `calls` (program name, then one argument a
/// line) and `<n>.env` (its `TF_*`/`MY_*` environment); `plan` writes the plan file and exits
/// 2 (changes), 0 when `ctl/no_changes` exists, 1 when `ctl/plan_fails` does; `apply` fails
/// unless its last argument is an existing plan file.
pub const STAND_IN: &str = r#"#!/bin/bash
calls='@CALLS@'
ctl='@CTL@'
n=$(ls "$calls" | grep -c '\.argv$')
f="$calls/$(printf %03d "$n")"
{ basename "$0"; printf '%s\n' "$@"; } > "$f.argv"
env | grep -E '^(TF_|MY_)' | sort > "$f.env"
cmd=""
for a in "$@"; do case "$a" in -*) ;; *) cmd="$a"; break ;; esac; done
case "$cmd" in
  init) echo "Terraform has been successfully initialized!" ;;
  workspace) echo "Switched to workspace \"${@: -1}\"." ;;
  plan)
    if [ -f "$ctl/plan_fails" ]; then echo "Error: Invalid configuration" >&2; exit 1; fi
    for a in "$@"; do case "$a" in -out=*) echo "saved plan" > "${a#-out=}" ;; esac; done
    if [ -f "$ctl/no_changes" ]; then
      echo "No changes. Your infrastructure matches the configuration."; exit 0
    fi
    echo "Plan: 1 to add, 0 to change, 0 to destroy."; exit 2 ;;
  apply)
    last="${@: -1}"
    if [ ! -f "$last" ]; then echo "Error: no saved plan at $last" >&2; exit 1; fi
    echo "Apply complete! Resources: 1 added, 0 changed, 0 destroyed." ;;
  *) echo "unexpected command: $*" >&2; exit 1 ;;
esac
"#;

/// Writes the stand-in as each of `names` in `bin`, recording calls in `calls` and reading
/// its controls from `ctl`.
pub fn install(bin: &Path, names: &[&str], calls: &Path, ctl: &Path) {
    let script = STAND_IN
        .replace("@CALLS@", calls.to_str().expect("utf-8"))
        .replace("@CTL@", ctl.to_str().expect("utf-8"));
    for name in names {
        let file = bin.join(name);
        std::fs::write(&file, &script).expect("stand-in");
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
}
