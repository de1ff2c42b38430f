//! The endpoints a batch may target, and what each requires of a line's body.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Responses,
    ];

    /// The path as it appears in `endpoint` and in each line's `url`.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Responses => "/v1/responses",
        }
    }

    /// The path relative to a backend base URL that already ends in `/v1`.
    pub fn backend_path(self) -> &'static str {
        &self.path()["/v1".len()..]
    }

    pub fn parse(path: &str) -> Option<Endpoint> {
        Self::ALL.into_iter().find(|e| e.path() == path)
    }

    /// The name OpenAI's messages use for the endpoint.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "Chat Completions",
            Endpoint::Completions => "Completions",
            Endpoint::Embeddings => "Embeddings",
            Endpoint::Responses => "Responses",
        }
    }

    /// The body field every line for this endpoint must carry besides `model`.
    pub fn required_field(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "messages",
            Endpoint::Completions => "prompt",
            Endpoint::Embeddings | Endpoint::Responses => "input",
        }
    }

    /// `'/v1/chat/completions', '/v1/completions', ...` for error messages.
    pub fn supported_list() -> String {
        Self::ALL
            .iter()
            .map(|e| format!("'{}'", e.path()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
