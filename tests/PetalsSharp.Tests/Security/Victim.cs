using Grpc.Core;
using PetalsSharp.Wire.V1;

namespace PetalsSharp.Tests.Security;

/// <summary>An honest session opened for an attack to aim at, on a channel of its own.</summary>
public sealed class Victim : IAsyncDisposable
{
    readonly AsyncDuplexStreamingCall<InferenceRequest, InferenceReply> _call;

    Victim(AsyncDuplexStreamingCall<InferenceRequest, InferenceReply> call, string id, string token)
    {
        _call = call;
        Id = id;
        Token = token;
    }

    public string Id { get; }
    public string Token { get; }

    public static async Task<Victim> OpenAsync(BlockTarget b, string token, string? id = null)
    {
        var open = BlockTarget.Open(id: id, token: token);
        var call = b.VictimClient.Inference(deadline: BlockTarget.Deadline(60));
        await call.RequestStream.WriteAsync(open);
        if (!await call.ResponseStream.MoveNext(CancellationToken.None) || call.ResponseStream.Current.KindCase != InferenceReply.KindOneofCase.Opened)
        {
            call.Dispose();
            throw new InvalidOperationException("the victim's session did not open");
        }
        return new Victim(call, open.Open.SessionId, token);
    }

    public Task SendAsync(InferenceRequest request) => _call.RequestStream.WriteAsync(request);

    /// <summary>The next step result on the victim's stream (its own or one pushed into it).</summary>
    public async Task<StepResult> ReadAsync()
    {
        if (!await _call.ResponseStream.MoveNext(CancellationToken.None)) throw new InvalidOperationException("the victim's stream ended");
        return _call.ResponseStream.Current.Result;
    }

    public async Task<StepResult> StepAsync(string stepId, int tokens)
    {
        await SendAsync(BlockTarget.Step(stepId, BlockTarget.Hidden(1, tokens)));
        return await ReadAsync();
    }

    /// <summary>
    /// Closes the victim's side and reads to the end: the status the server ended the session with is thrown from
    /// here. Anything already in the session's inbox (a push delivered before) is served before the close.
    /// </summary>
    public async Task<Outcome> EndAsync()
    {
        await Calls.WriteAllAsync(_call.RequestStream, []);
        await Calls.DrainAsync(_call.ResponseStream);
        return Outcome.Ok("the victim's session ended normally");
    }

    /// <summary>Ends the session and waits until the server has closed it (its id is free again then).</summary>
    public async Task CloseAsync()
    {
        await EndAsync();
        _call.Dispose();
    }

    public ValueTask DisposeAsync()
    {
        _call.Dispose();
        return ValueTask.CompletedTask;
    }
}
