using System.Runtime.CompilerServices;
using Microsoft.Extensions.AI;
using PetalsSharp.Models;
using PetalsSharp.Text.Templates;

namespace PetalsSharp.Api.Chat;

/// <summary>
/// <see cref="IChatClient"/> over a <see cref="CausalLM"/>, local (<see cref="CausalLM.Load"/>) or distributed
/// (<see cref="Client.DistributedModel"/>). Honors Temperature (0 = greedy), TopP, TopK, MaxOutputTokens,
/// StopSequences, Seed, FrequencyPenalty and PresencePenalty, plus the <see cref="PetalsKeys"/> in
/// AdditionalProperties; reports FinishReason (Stop/Length), Usage and ModelId. Each call runs its own inference
/// session, so calls may overlap.
/// </summary>
public sealed class PetalsChatClient : IChatClient
{
    readonly bool _ownsModel;

    /// <param name="model">The model; not disposed unless <paramref name="ownsModel"/>.</param>
    /// <param name="modelId">The id responses carry (e.g. the model folder's name).</param>
    /// <param name="template">The chat template; null uses the plain fallback of <see cref="ChatPrompt"/>.</param>
    /// <param name="ownsModel">Dispose the model with the client.</param>
    public PetalsChatClient(CausalLM model, string modelId, ChatTemplate? template = null, bool ownsModel = false)
    {
        Engine = new TextEngine(model, modelId);
        Template = template;
        _ownsModel = ownsModel;
        Metadata = new ChatClientMetadata("petals", null, modelId);
    }

    /// <summary>A client for a model folder's model, with the folder's chat template when it has one.</summary>
    public static PetalsChatClient ForFolder(CausalLM model, string modelDir, bool ownsModel = false) =>
        new(model, Swarm.ModelNames.FromFolder(modelDir), ChatTemplate.TryLoad(modelDir), ownsModel);

    public TextEngine Engine { get; }
    public ChatTemplate? Template { get; }
    public ChatClientMetadata Metadata { get; }

    /// <summary>Prompt ids and generation options for <paramref name="messages"/> (what a call would run).</summary>
    public GenerationRequest Prepare(IEnumerable<ChatMessage> messages, ChatOptions? options)
    {
        var (text, fromTemplate) = ChatPrompt.Format(messages, Template);
        var ids = Engine.Encode(text, fromTemplate ? false : null);
        var request = GenerationRequest.Create(Engine.Model, ids, options);
        if (fromTemplate) return request;
        return request with { Options = request.Options with { StopStrings = [.. request.Options.StopStrings, ChatPrompt.FallbackStop] } };
    }

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        var request = Prepare(messages, options);
        var done = await Engine.GenerateAsync(request, cancellationToken).ConfigureAwait(false);
        return new ChatResponse(new ChatMessage(ChatRole.Assistant, done.Text))
        {
            ResponseId = NewId(),
            ModelId = Engine.ModelId,
            CreatedAt = DateTimeOffset.UtcNow,
            FinishReason = done.FinishReason,
            Usage = Usage(done),
            AdditionalProperties = Extra(done),
        };
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages,
        ChatOptions? options = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var request = Prepare(messages, options);
        var id = NewId();
        var created = DateTimeOffset.UtcNow;
        await foreach (var u in Engine.StreamAsync(request, cancellationToken).ConfigureAwait(false))
        {
            var update = new ChatResponseUpdate(ChatRole.Assistant, u.Delta)
            {
                ResponseId = id, MessageId = id, ModelId = Engine.ModelId, CreatedAt = created,
            };
            if (u.Final is { } done)
            {
                update.FinishReason = done.FinishReason;
                update.Contents.Add(new UsageContent(Usage(done)));
                update.AdditionalProperties = Extra(done);
            }
            yield return update;
        }
    }

    internal static UsageDetails Usage(TextCompletion done) => new()
    {
        InputTokenCount = done.PromptTokens,
        OutputTokenCount = done.CompletionTokens,
        TotalTokenCount = done.PromptTokens + done.CompletionTokens,
        CachedInputTokenCount = done.CachedTokens,
    };

    static AdditionalPropertiesDictionary? Extra(TextCompletion done) =>
        done.Route is null ? null : new() { [PetalsKeys.Route] = done.Route };

    static string NewId() => "chatcmpl-" + Guid.NewGuid().ToString("N");

    public object? GetService(Type serviceType, object? serviceKey = null) =>
        serviceKey is not null ? null
        : serviceType == typeof(ChatClientMetadata) ? Metadata
        : serviceType.IsInstanceOfType(this) ? this
        : serviceType == typeof(CausalLM) ? Engine.Model
        : null;

    public void Dispose()
    {
        if (_ownsModel) Engine.Model.Dispose();
    }
}
