//! Views: named tabs over a project's templates, shown in `position` order. A template's
//! `view_id` must name a view of its project; deleting a view takes it off its templates in
//! the same transaction (a view never blocks a delete).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Names, ProjectResource, Refs, Target, WRONG_PROJECT, event, require, users};
use crate::model::{ProjectId, Template, View};
use crate::service::projects::Access;
use crate::service::{Error, Result, Services, validate};
use crate::store::{Lists, Tx};

/// A view body (create and update).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ViewInput {
    /// Must equal the URL on update.
    pub id: Option<u64>,
    /// Must equal the URL's project when given.
    pub project_id: Option<u64>,
    /// Tab title (required).
    pub title: Option<String>,
    /// Place among the project's views; 0 on create when absent, kept on update.
    pub position: Option<i64>,
}

/// A validated view body.
pub struct ViewFields {
    project: ProjectId,
    title: String,
    position: Option<i64>,
}

impl ProjectResource for View {
    type Input = ViewInput;
    type Fields = ViewFields;
    const NAMES: Names = Names::new("view", "View")
        .update_messages("View ID in URL and in body must be the same", WRONG_PROJECT);

    fn name(&self) -> &str {
        &self.title
    }

    fn body_ids(input: &ViewInput) -> (Option<u64>, Option<u64>) {
        (input.id, input.project_id)
    }

    fn fields(_: &Services, input: ViewInput, to: Target) -> Result<ViewFields> {
        let title = input.title.unwrap_or_default();
        validate::name(&title, "title").map_err(Error::Invalid)?;
        Ok(ViewFields {
            project: to.project,
            title: title.trim().to_owned(),
            position: input.position,
        })
    }

    fn record(_: &Tx<'_>, fields: &ViewFields, current: Option<Self>) -> Result<Self> {
        let kept = current.as_ref().map_or(0, |v| v.position);
        Ok(View {
            id: current.map_or(0, |v| v.id),
            project_id: fields.project,
            title: fields.title.clone(),
            position: fields.position.unwrap_or(kept),
        })
    }

    fn refs(lists: &impl Lists, p: ProjectId, id: u64) -> Result<Refs> {
        Ok(Refs {
            templates: users(lists, p, |t: &Template| t.view_id == Some(id))?,
            ..Refs::default()
        })
    }

    /// Its templates only lose their tab.
    fn in_use(_: &Refs) -> Option<Error> {
        None
    }

    fn removing(&self, tx: &Tx<'_>) -> Result<()> {
        let shown: Vec<Template> = tx.list(self.project_id)?;
        for mut t in shown.into_iter().filter(|t| t.view_id == Some(self.id)) {
            t.view_id = None;
            tx.put(&t)?;
        }
        Ok(())
    }
}

impl Services {
    /// Moves views: `{"<view id>": position, ...}`. Every id must name a view of the project,
    /// else nothing is written; records an event per view that moved.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the first id that is no view of the project.
    pub async fn set_view_positions(
        &self,
        access: &Access,
        positions: BTreeMap<String, i64>,
    ) -> Result<()> {
        let moves = positions
            .into_iter()
            .map(|(key, position)| match key.parse::<u64>() {
                Ok(id) if id > 0 => Ok((id, position)),
                _ => Err(Error::Invalid(format!("{key:?} is not a view id"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let access = access.clone();
        self.transact(move |tx| {
            let p = access.project_id();
            for &(id, position) in &moves {
                let mut view: View = require(tx, p, id, "positions", "view")?;
                if view.position != position {
                    view.position = position;
                    tx.put(&view)?;
                    tx.record(event::<View>(&access, id, &view.title, "moved"))?;
                }
            }
            Ok(())
        })
        .await
    }

    /// The templates shown in view `id`, by id.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the project has no such view.
    pub fn view_templates(&self, access: &Access, id: u64) -> Result<Vec<Template>> {
        self.resource::<View>(access, id)?;
        let all: Vec<Template> = self.resources(access)?;
        Ok(all.into_iter().filter(|t| t.view_id == Some(id)).collect())
    }
}
