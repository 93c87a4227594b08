//! The confirmation page every operator's decision goes through (skip an event, pause
//! or resume a handler route, a workflow kind or a run): what the decision does, the
//! facts it is about, a required reason, and the button.
//!
//! The reason is checked here as the API checks it ([`Reason::parse`]); a reason that
//! is not one brings the same page back with status 400, an error summary that takes
//! the focus and links to the field, and the field's own message. Nothing is written
//! then.

use askama::Template;
use axum::http::StatusCode;
use axum::response::Response;

use cairn_types::Reason;

use super::{Form, Layout, Session, render};

/// One fact the decision is about; `href` makes it a link, `code` sets it as code.
pub(crate) struct Fact {
    pub label: &'static str,
    pub text: String,
    pub href: Option<String>,
    pub code: bool,
}

impl Fact {
    pub fn text(label: &'static str, text: impl Into<String>) -> Fact {
        Fact {
            label,
            text: text.into(),
            href: None,
            code: false,
        }
    }

    pub fn code(label: &'static str, text: impl Into<String>) -> Fact {
        Fact {
            code: true,
            ..Fact::text(label, text)
        }
    }

    pub fn link(mut self, href: impl Into<String>) -> Fact {
        self.href = Some(href.into());
        self
    }
}

/// A choice between options (radio buttons), such as which event types to pause.
pub(crate) struct Choice {
    pub legend: String,
    pub name: &'static str,
    /// Value, label (set as code when `code`), whether chosen, whether it may be chosen.
    pub options: Vec<ChoiceOption>,
}

pub(crate) struct ChoiceOption {
    pub value: String,
    pub label: String,
    pub code: bool,
    pub checked: bool,
    pub disabled: bool,
    pub note: Option<String>,
}

/// The reason field: what was typed, and what is wrong with it.
pub(crate) struct ReasonField {
    pub value: String,
    pub error: Option<String>,
    pub hint: &'static str,
}

impl ReasonField {
    /// An empty field.
    pub fn blank(hint: &'static str) -> ReasonField {
        ReasonField {
            value: String::new(),
            error: None,
            hint,
        }
    }
}

/// The form's reason, or the field to show again with its error.
pub(crate) fn reason_of(form: &Form, hint: &'static str) -> Result<Reason, ReasonField> {
    let value = form.text("reason");
    Reason::parse(&value).map_err(|error| ReasonField {
        value,
        error: Some(upper_first(&error.to_string())),
        hint,
    })
}

fn upper_first(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

#[derive(Template)]
#[template(path = "console/confirm.html")]
pub(crate) struct ConfirmPage {
    pub layout: Layout,
    pub heading: String,
    /// The first paragraph, set larger.
    pub lead: String,
    /// What the decision does, a paragraph each.
    pub explanation: Vec<String>,
    pub facts: Vec<Fact>,
    /// Where the form posts.
    pub action: String,
    pub hidden: Vec<(&'static str, String)>,
    pub choice: Option<Choice>,
    pub reason: ReasonField,
    pub submit: String,
    /// Whether the decision stops or drops something (a red button).
    pub danger: bool,
    /// Where "Cancel" leads.
    pub cancel: String,
}

impl ConfirmPage {
    /// A confirmation page in the session's frame, marked in the nav at `section`.
    pub fn new(
        session: &Session,
        section: &str,
        heading: impl Into<String>,
        action: impl Into<String>,
        cancel: impl Into<String>,
    ) -> ConfirmPage {
        let heading = heading.into();
        ConfirmPage {
            layout: Layout::new(session, heading.clone(), section),
            heading,
            lead: String::new(),
            explanation: Vec::new(),
            facts: Vec::new(),
            action: action.into(),
            hidden: Vec::new(),
            choice: None,
            reason: ReasonField::blank(""),
            submit: String::new(),
            danger: false,
            cancel: cancel.into(),
        }
    }

    /// Renders the page: 200, or 400 when the reason is refused.
    pub fn show(self) -> Response {
        let status = if self.reason.error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        };
        render(status, &self)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_refused_reason_says_why_as_a_sentence() {
        assert_eq!(
            super::upper_first("a reason is required: it is empty"),
            "A reason is required: it is empty"
        );
        assert_eq!(super::upper_first(""), "");
    }
}
