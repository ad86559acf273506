namespace PetalsSharp.Api.Chat;

/// <summary>
/// Petals-specific keys of <c>ChatOptions.AdditionalProperties</c> (requests) and of a response's
/// <c>AdditionalProperties</c> (results). Anything else in AdditionalProperties is ignored.
/// </summary>
public static class PetalsKeys
{
    /// <summary>Request, double &gt; 0: Hugging Face's multiplicative repetition penalty (1 = off).</summary>
    public const string RepetitionPenalty = "petals.repetition_penalty";

    /// <summary>Request, bool: put the server route of the session into the response under <see cref="Route"/>.</summary>
    public const string ShowRoute = "petals.show_route";

    /// <summary>
    /// Request, string: the server-side LoRA adapter to run with (servers load them with <c>--adapters</c>). Routing
    /// uses only servers that hold it; when none covers the model, the request fails with a swarm error naming it.
    /// Distributed models only (a local model fails with <see cref="NotSupportedException"/>).
    /// </summary>
    public const string Adapter = "petals.adapter";

    /// <summary>
    /// Request, string[] or comma-separated string: use only these servers (addresses or peer ids) for this
    /// request. Distributed models only.
    /// </summary>
    public const string AllowedServers = "petals.allowed_servers";

    /// <summary>Request, string[] or comma-separated string: never use these servers for this request.</summary>
    public const string BlockedServers = "petals.blocked_servers";

    /// <summary>Request, bool: keep generating past the end-of-sequence token.</summary>
    public const string IgnoreEos = "petals.ignore_eos";

    /// <summary>Response, string: <c>route: ADDR[start:end] ...</c> as planned when the session opened.</summary>
    public const string Route = "petals.route";

    /// <summary>
    /// Request: speculative decoding for this call. A string, <c>"prompt-lookup"</c> (free: copies what followed the
    /// last n-gram), <c>"draft-model"</c> (the small model the engine was given, <see cref="TextEngine.DraftModel"/>) or
    /// <c>"off"</c>, optionally with the starting draft length after a colon (<c>"draft-model:6"</c>); over HTTP also an
    /// object <c>{"draft": "prompt-lookup", "tokens": 6}</c>. Output is unchanged: greedy tokens are the same, sampled
    /// ones have the same distribution.
    /// </summary>
    public const string Speculative = "petals.speculative";
}
