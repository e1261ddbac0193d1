//! The one route table, and a matchit router per method over it.

use std::collections::HashMap;

use hyper::Method;

use super::auth::Need;
use super::handler::{Handler, HandlerFuture};
use super::handlers::{
    apps, confirm, integrations as int, meta, metrics, notifications, options, project_backup,
    projects, resources as res, runners, session, site, tasks, tokens, totp, users, ws,
};
use crate::model::{
    AccessKey, Environment, Integration, IntegrationMatcher as Matcher, IntegrationValue as Value,
    Inventory, Permissions, Repository, Schedule, Template, View,
};

/// One route: method, path (matchit syntax), what it needs of the caller, and its handler.
#[derive(Debug, Clone)]
pub struct Route {
    /// HTTP method (HEAD is served by every GET route that has no side effect).
    pub method: Method,
    /// Path pattern, e.g. `/api/users/{id}`.
    pub path: &'static str,
    /// Required authentication.
    pub need: Need,
    /// The handler.
    pub handler: Handler,
    /// A GET route whose handler acts (the integration receiver launches tasks): HEAD, which
    /// clients and proxies send as a harmless probe, must not reach it.
    pub acts: bool,
    /// Its position in the route table (set by [`Router::new`]): the index of its request
    /// counters (`crate::metrics::Http`).
    pub slot: usize,
}

macro_rules! route {
    ($method:ident $path:literal, $need:ident, $handler:path) => {
        Route {
            method: Method::$method,
            path: $path,
            need: Need::$need,
            handler: |req| -> HandlerFuture { Box::pin($handler(req)) },
            acts: false,
            slot: 0,
        }
    };
    (GET $path:literal, $need:ident, $handler:path, acts) => {
        Route {
            acts: true,
            ..route!(GET $path, $need, $handler)
        }
    };
    ($method:ident $path:literal, Project($perm:ident), $handler:path) => {
        Route {
            method: Method::$method,
            path: $path,
            need: Need::Project(Permissions::$perm),
            handler: |req| -> HandlerFuture { Box::pin($handler(req)) },
            acts: false,
            slot: 0,
        }
    };
}

/// Every route Forge serves.
#[must_use]
pub fn routes() -> Vec<Route> {
    vec![
        route!(GET "/api/ping", Anonymous, meta::ping),
        route!(GET "/api/health", Anonymous, meta::health),
        route!(GET "/api/info", User, meta::info),
        route!(GET "/api/openapi.json", Anonymous, site::openapi),
        route!(GET "/api/postman.json", Anonymous, site::postman),
        route!(GET "/api/auth/login", Anonymous, session::login_options),
        route!(POST "/api/auth/login", Anonymous, session::login),
        route!(POST "/api/auth/logout", Anonymous, session::logout),
        route!(GET "/api/user", User, users::current),
        route!(GET "/api/user/tokens", User, tokens::list),
        route!(POST "/api/user/tokens", User, tokens::create),
        route!(DELETE "/api/user/tokens/{token_id}", User, tokens::expire),
        route!(GET "/api/users", User, users::list),
        route!(POST "/api/users", User, users::create),
        route!(GET "/api/users/{user_id}", User, users::get),
        route!(PUT "/api/users/{user_id}", User, users::update),
        route!(DELETE "/api/users/{user_id}", User, users::delete),
        route!(POST "/api/users/{user_id}/password", User, users::set_password),
        route!(GET "/api/projects", User, projects::list),
        route!(POST "/api/projects", User, projects::create),
        route!(POST "/api/projects/restore", User, project_backup::restore),
        route!(GET "/api/events", User, projects::events),
        route!(GET "/api/events/last", User, projects::events_last),
        route!(GET "/api/project/{project_id}", Project(NONE), projects::get),
        route!(PUT "/api/project/{project_id}", Project(UPDATE_PROJECT), projects::update),
        route!(DELETE "/api/project/{project_id}", Project(UPDATE_PROJECT), projects::delete),
        route!(GET "/api/project/{project_id}/role", Project(NONE), projects::role),
        route!(GET "/api/project/{project_id}/backup", Project(NONE), project_backup::backup),
        route!(DELETE "/api/project/{project_id}/me", Project(NONE), projects::leave),
        route!(GET "/api/project/{project_id}/events", Project(NONE), projects::project_events),
        route!(GET "/api/project/{project_id}/events/last", Project(NONE), projects::project_events_last),
        route!(GET "/api/project/{project_id}/users", Project(NONE), projects::members),
        route!(POST "/api/project/{project_id}/users", Project(MANAGE_USERS), projects::add_member),
        route!(GET "/api/project/{project_id}/users/{user_id}", Project(NONE), projects::member),
        route!(PUT "/api/project/{project_id}/users/{user_id}", Project(MANAGE_USERS), projects::set_role),
        route!(DELETE "/api/project/{project_id}/users/{user_id}", Project(MANAGE_USERS), projects::remove_member),
        route!(GET "/api/project/{project_id}/keys", Project(NONE), res::list::<AccessKey>),
        route!(POST "/api/project/{project_id}/keys", Project(MANAGE_RESOURCES), res::create::<AccessKey>),
        route!(GET "/api/project/{project_id}/keys/{key_id}", Project(NONE), res::get::<AccessKey>),
        route!(PUT "/api/project/{project_id}/keys/{key_id}", Project(MANAGE_RESOURCES), res::update::<AccessKey>),
        route!(DELETE "/api/project/{project_id}/keys/{key_id}", Project(MANAGE_RESOURCES), res::delete::<AccessKey>),
        route!(GET "/api/project/{project_id}/keys/{key_id}/refs", Project(NONE), res::refs::<AccessKey>),
        route!(GET "/api/project/{project_id}/repositories", Project(NONE), res::list::<Repository>),
        route!(POST "/api/project/{project_id}/repositories", Project(MANAGE_RESOURCES), res::create::<Repository>),
        route!(GET "/api/project/{project_id}/repositories/{repository_id}", Project(NONE), res::get::<Repository>),
        route!(PUT "/api/project/{project_id}/repositories/{repository_id}", Project(MANAGE_RESOURCES), res::update::<Repository>),
        route!(DELETE "/api/project/{project_id}/repositories/{repository_id}", Project(MANAGE_RESOURCES), res::delete::<Repository>),
        route!(GET "/api/project/{project_id}/repositories/{repository_id}/refs", Project(NONE), res::refs::<Repository>),
        route!(GET "/api/project/{project_id}/inventory", Project(NONE), res::list::<Inventory>),
        route!(POST "/api/project/{project_id}/inventory", Project(MANAGE_RESOURCES), res::create::<Inventory>),
        route!(GET "/api/project/{project_id}/inventory/{inventory_id}", Project(NONE), res::get::<Inventory>),
        route!(PUT "/api/project/{project_id}/inventory/{inventory_id}", Project(MANAGE_RESOURCES), res::update::<Inventory>),
        route!(DELETE "/api/project/{project_id}/inventory/{inventory_id}", Project(MANAGE_RESOURCES), res::delete::<Inventory>),
        route!(GET "/api/project/{project_id}/inventory/{inventory_id}/refs", Project(NONE), res::refs::<Inventory>),
        route!(GET "/api/project/{project_id}/environment", Project(NONE), res::list::<Environment>),
        route!(POST "/api/project/{project_id}/environment", Project(MANAGE_RESOURCES), res::create::<Environment>),
        route!(GET "/api/project/{project_id}/environment/{environment_id}", Project(NONE), res::get::<Environment>),
        route!(PUT "/api/project/{project_id}/environment/{environment_id}", Project(MANAGE_RESOURCES), res::update::<Environment>),
        route!(DELETE "/api/project/{project_id}/environment/{environment_id}", Project(MANAGE_RESOURCES), res::delete::<Environment>),
        route!(GET "/api/project/{project_id}/environment/{environment_id}/refs", Project(NONE), res::refs::<Environment>),
        route!(GET "/api/project/{project_id}/templates", Project(NONE), res::list::<Template>),
        route!(POST "/api/project/{project_id}/templates", Project(MANAGE_RESOURCES), res::create::<Template>),
        route!(GET "/api/project/{project_id}/templates/{template_id}", Project(NONE), res::get::<Template>),
        route!(PUT "/api/project/{project_id}/templates/{template_id}", Project(MANAGE_RESOURCES), res::update::<Template>),
        route!(DELETE "/api/project/{project_id}/templates/{template_id}", Project(MANAGE_RESOURCES), res::delete::<Template>),
        route!(GET "/api/project/{project_id}/templates/{template_id}/refs", Project(NONE), res::refs::<Template>),
        route!(GET "/api/project/{project_id}/templates/{template_id}/tasks", Project(NONE), tasks::template_tasks),
        route!(GET "/api/project/{project_id}/templates/{template_id}/tasks/last", Project(NONE), tasks::template_tasks_last),
        route!(GET "/api/project/{project_id}/templates/{template_id}/stats", Project(NONE), tasks::template_stats),
        route!(GET "/api/project/{project_id}/views", Project(NONE), res::list::<View>),
        route!(POST "/api/project/{project_id}/views", Project(MANAGE_RESOURCES), res::create::<View>),
        route!(POST "/api/project/{project_id}/views/positions", Project(MANAGE_RESOURCES), res::views::positions),
        route!(GET "/api/project/{project_id}/views/{view_id}", Project(NONE), res::get::<View>),
        route!(PUT "/api/project/{project_id}/views/{view_id}", Project(MANAGE_RESOURCES), res::update::<View>),
        route!(DELETE "/api/project/{project_id}/views/{view_id}", Project(MANAGE_RESOURCES), res::delete::<View>),
        route!(GET "/api/project/{project_id}/views/{view_id}/templates", Project(NONE), res::views::templates),
        route!(GET "/api/project/{project_id}/host_keys", Project(NONE), res::list::<crate::model::HostKey>),
        route!(GET "/api/project/{project_id}/host_keys/{host_key_id}", Project(NONE), res::get::<crate::model::HostKey>),
        route!(DELETE "/api/project/{project_id}/host_keys/{host_key_id}", Project(MANAGE_RESOURCES), res::delete::<crate::model::HostKey>),
        route!(GET "/api/project/{project_id}/schedules", Project(NONE), res::list::<Schedule>),
        route!(POST "/api/project/{project_id}/schedules", Project(MANAGE_RESOURCES), res::schedules::create),
        route!(POST "/api/project/{project_id}/schedules/validate", Project(MANAGE_RESOURCES), res::schedules::validate),
        route!(GET "/api/project/{project_id}/schedules/{schedule_id}", Project(NONE), res::get::<Schedule>),
        route!(PUT "/api/project/{project_id}/schedules/{schedule_id}", Project(MANAGE_RESOURCES), res::schedules::update),
        route!(DELETE "/api/project/{project_id}/schedules/{schedule_id}", Project(MANAGE_RESOURCES), res::schedules::delete),
        route!(PUT "/api/project/{project_id}/schedules/{schedule_id}/active", Project(MANAGE_RESOURCES), res::schedules::set_active),
        route!(GET "/api/project/{project_id}/templates/{template_id}/schedules", Project(NONE), res::schedules::of_template),
        route!(GET "/api/project/{project_id}/tasks", Project(NONE), tasks::list),
        route!(POST "/api/project/{project_id}/tasks", Project(RUN_TASKS), tasks::create),
        route!(GET "/api/project/{project_id}/tasks/last", Project(NONE), tasks::last),
        route!(GET "/api/project/{project_id}/tasks/{task_id}", Project(NONE), tasks::get),
        route!(DELETE "/api/project/{project_id}/tasks/{task_id}", Project(MANAGE_RESOURCES), tasks::delete),
        route!(GET "/api/project/{project_id}/tasks/{task_id}/output", Project(NONE), tasks::output),
        route!(POST "/api/project/{project_id}/tasks/{task_id}/stop", Project(RUN_TASKS), tasks::stop),
        route!(GET "/api/project/{project_id}/tasks/{task_id}/raw_output", Project(NONE), tasks::raw_output),
        route!(GET "/api/tasks", Admin, tasks::active),
        route!(GET "/api/tasks/{task_id}", Admin, tasks::admin_get),
        route!(DELETE "/api/tasks/{task_id}", Admin, tasks::admin_delete),
        route!(GET "/api/ws", User, ws::connect),
        route!(GET "/api/backup", Admin, super::handlers::backup::download),
        route!(GET "/api/options", Admin, options::list),
        route!(POST "/api/options", Admin, options::set),
        route!(GET "/api/apps", User, apps::list),
        route!(GET "/api/apps/{app_id}", Admin, apps::get),
        route!(PUT "/api/apps/{app_id}", Admin, apps::put),
        route!(DELETE "/api/apps/{app_id}", Admin, apps::delete),
        route!(POST "/api/apps/{app_id}/active", Admin, apps::set_active),
        route!(POST "/api/project/{project_id}/tasks/{task_id}/confirm", Project(RUN_TASKS), confirm::confirm),
        route!(GET "/api/project/{project_id}/integrations", Project(NONE), res::list::<Integration>),
        route!(POST "/api/project/{project_id}/integrations", Project(MANAGE_RESOURCES), res::create::<Integration>),
        route!(GET "/api/project/{project_id}/integrations/aliases", Project(NONE), int::list_aliases),
        route!(POST "/api/project/{project_id}/integrations/aliases", Project(MANAGE_RESOURCES), int::create_alias),
        route!(DELETE "/api/project/{project_id}/integrations/aliases/{alias_id}", Project(MANAGE_RESOURCES), int::delete_alias),
        route!(GET "/api/project/{project_id}/integrations/{integration_id}", Project(NONE), res::get::<Integration>),
        route!(PUT "/api/project/{project_id}/integrations/{integration_id}", Project(MANAGE_RESOURCES), res::update::<Integration>),
        route!(DELETE "/api/project/{project_id}/integrations/{integration_id}", Project(MANAGE_RESOURCES), res::delete::<Integration>),
        route!(GET "/api/project/{project_id}/integrations/{integration_id}/refs", Project(NONE), res::refs::<Integration>),
        route!(GET "/api/project/{project_id}/integrations/{integration_id}/matchers", Project(NONE), int::list_parts::<Matcher>),
        route!(POST "/api/project/{project_id}/integrations/{integration_id}/matchers", Project(MANAGE_RESOURCES), int::create_part::<Matcher>),
        route!(GET "/api/project/{project_id}/integrations/{integration_id}/matchers/{matcher_id}", Project(NONE), int::get_part::<Matcher>),
        route!(PUT "/api/project/{project_id}/integrations/{integration_id}/matchers/{matcher_id}", Project(MANAGE_RESOURCES), int::update_part::<Matcher>),
        route!(DELETE "/api/project/{project_id}/integrations/{integration_id}/matchers/{matcher_id}", Project(MANAGE_RESOURCES), int::delete_part::<Matcher>),
        route!(GET "/api/project/{project_id}/integrations/{integration_id}/matchers/{matcher_id}/refs", Project(NONE), int::part_refs::<Matcher>),
        route!(GET "/api/project/{project_id}/integrations/{integration_id}/values", Project(NONE), int::list_parts::<Value>),
        route!(POST "/api/project/{project_id}/integrations/{integration_id}/values", Project(MANAGE_RESOURCES), int::create_part::<Value>),
        route!(GET "/api/project/{project_id}/integrations/{integration_id}/values/{value_id}", Project(NONE), int::get_part::<Value>),
        route!(PUT "/api/project/{project_id}/integrations/{integration_id}/values/{value_id}", Project(MANAGE_RESOURCES), int::update_part::<Value>),
        route!(DELETE "/api/project/{project_id}/integrations/{integration_id}/values/{value_id}", Project(MANAGE_RESOURCES), int::delete_part::<Value>),
        route!(GET "/api/project/{project_id}/integrations/{integration_id}/values/{value_id}/refs", Project(NONE), int::part_refs::<Value>),
        route!(GET "/api/project/{project_id}/integrations/{integration_id}/aliases", Project(NONE), int::list_aliases),
        route!(POST "/api/project/{project_id}/integrations/{integration_id}/aliases", Project(MANAGE_RESOURCES), int::create_alias),
        route!(DELETE "/api/project/{project_id}/integrations/{integration_id}/aliases/{alias_id}", Project(MANAGE_RESOURCES), int::delete_alias),
        route!(GET "/api/project/{project_id}/integrations/{integration_id}/deliveries", Project(NONE), int::deliveries),
        route!(GET "/api/integrations/{integration_alias}", Anonymous, int::receive, acts),
        route!(POST "/api/integrations/{integration_alias}", Anonymous, int::receive),
        route!(POST "/api/project/{project_id}/tasks/{task_id}/reject", Project(RUN_TASKS), confirm::reject),
        route!(POST "/api/project/{project_id}/notifications/test", Project(MANAGE_RESOURCES), notifications::test),
        route!(GET "/api/metrics", Metrics, metrics::scrape),
        route!(POST "/api/internal/runners", Anonymous, runners::register),
        route!(GET "/api/internal/runners", Anonymous, runners::poll, acts),
        route!(PUT "/api/internal/runners", Anonymous, runners::report),
        route!(DELETE "/api/internal/runners", Anonymous, runners::unregister),
        route!(GET "/api/runners", Admin, runners::list),
        route!(POST "/api/runners", Admin, runners::create),
        route!(GET "/api/runners/{runner_id}", Admin, runners::get),
        route!(PUT "/api/runners/{runner_id}", Admin, runners::update),
        route!(DELETE "/api/runners/{runner_id}", Admin, runners::delete),
        route!(POST "/api/runners/{runner_id}/active", Admin, runners::set_active),
        route!(POST "/api/auth/verify", SecondFactor, totp::verify),
        route!(POST "/api/auth/recovery", SecondFactor, totp::recovery),
        route!(POST "/api/users/{user_id}/2fas/totp", User, totp::enable),
        route!(GET "/api/users/{user_id}/2fas/totp/{totp_id}/qr", User, totp::qr),
        route!(DELETE "/api/users/{user_id}/2fas/totp/{totp_id}", User, totp::disable),
    ]
}

/// The outcome of looking a request up.
#[derive(Debug)]
pub enum Lookup<'r> {
    /// A route, with its path parameters.
    Found(&'r Route, Vec<(String, String)>),
    /// The path exists for these other methods.
    MethodNotAllowed(String),
    /// No route has this path.
    NotFound,
}

/// Routes indexed by method.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    by_method: HashMap<Method, matchit::Router<usize>>,
}

impl Router {
    /// Builds the router over `routes`.
    ///
    /// # Panics
    /// When two routes conflict: the table is static, so this is a programming error caught by
    /// every test that starts a server.
    #[must_use]
    pub fn new(mut routes: Vec<Route>) -> Self {
        let mut by_method: HashMap<Method, matchit::Router<usize>> = HashMap::new();
        for (i, r) in routes.iter_mut().enumerate() {
            r.slot = i;
            by_method
                .entry(r.method.clone())
                .or_default()
                .insert(r.path, i)
                .unwrap_or_else(|e| panic!("route table conflict at {} {}: {e}", r.method, r.path));
        }
        Self { routes, by_method }
    }

    /// Finds the route for `method` and `path` (HEAD is looked up as GET, except for a GET
    /// route that acts).
    #[must_use]
    pub fn lookup(&self, method: &Method, path: &str) -> Lookup<'_> {
        let head = method == Method::HEAD;
        let method = if head { &Method::GET } else { method };
        if let Some(m) = self
            .by_method
            .get(method)
            .and_then(|r| r.at(path).ok())
            .filter(|m| !(head && self.routes[*m.value].acts))
        {
            let params = m
                .params
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            return Lookup::Found(&self.routes[*m.value], params);
        }
        let mut head_served = false;
        let mut allowed: Vec<&str> = self
            .by_method
            .iter()
            .filter_map(|(m, r)| {
                let found = r.at(path).ok()?;
                head_served |= *m == Method::GET && !self.routes[*found.value].acts;
                Some(m.as_str())
            })
            .collect();
        if allowed.is_empty() {
            return Lookup::NotFound;
        }
        if head_served {
            allowed.push("HEAD");
        }
        allowed.sort_unstable();
        Lookup::MethodNotAllowed(allowed.join(", "))
    }

    /// The route table.
    #[must_use]
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_paths_and_params() {
        let r = Router::new(routes());
        match r.lookup(&Method::GET, "/api/users/12") {
            Lookup::Found(route, params) => {
                assert_eq!(route.path, "/api/users/{user_id}");
                assert_eq!(params, [("user_id".to_owned(), "12".to_owned())]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            r.lookup(&Method::HEAD, "/api/ping"),
            Lookup::Found(..)
        ));
        match r.lookup(&Method::PATCH, "/api/users/1") {
            Lookup::MethodNotAllowed(allow) => assert_eq!(allow, "DELETE, GET, HEAD, PUT"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            r.lookup(&Method::GET, "/api/nope"),
            Lookup::NotFound
        ));
    }

    #[test]
    fn head_never_reaches_a_get_route_that_acts() {
        let r = Router::new(routes());
        assert!(matches!(
            r.lookup(&Method::GET, "/api/integrations/abc"),
            Lookup::Found(..)
        ));
        match r.lookup(&Method::HEAD, "/api/integrations/abc") {
            Lookup::MethodNotAllowed(allow) => assert_eq!(allow, "GET, POST"),
            other => panic!("{other:?}"),
        }
    }
}
