use super::Channel;

/// One version of one message template, as `notification_template_versions`
/// stores it (MiniJinja text; `messages::templates` compiles it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSource {
    pub key: String,
    pub channel: Channel,
    pub version: i32,
    pub locale: String,
    pub subject: Option<String>,
    pub html: Option<String>,
    pub text: Option<String>,
    pub body: Option<String>,
    /// The id or alias of a template Resend hosts.
    pub resend_template: Option<String>,
}
