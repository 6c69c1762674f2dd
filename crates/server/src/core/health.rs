//! The one health status every component reports, worst first when sorted
//! last: `/health` shows the worst of a component's checks, and the node's
//! overall status is the worst of its active components.

/// Status of a health check or a component (DESIGN §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// Working as configured.
    Ok,
    /// Not configured on this node; ignored in the overall status.
    Deactivated,
    /// Working, but something needs an operator's look.
    Degraded,
    /// Not working: the node answers 503 on `/health`.
    Ko,
}

impl Health {
    /// The name `/health` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "OK",
            Health::Deactivated => "Deactivated",
            Health::Degraded => "Degraded",
            Health::Ko => "KO",
        }
    }
}
