using Grpc.Core;
using PetalsSharp.Swarm;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace PetalsSharp.Client;

/// <summary>Forward and Backward RPCs of one hop, with tensors chunked both ways.</summary>
internal static class RemoteCalls
{
    public static async Task<Tensor> ForwardAsync(ServerConnection server, ChainHop hop, Tensor hidden, Tensor? prompts,
        IReadOnlyList<int>? leftPadding, RemoteOptions options, CancellationToken ct)
    {
        var header = Header(hop, leftPadding, options);
        header.WithPrompts = prompts is not null;
        var reply = await CallAsync(server.Client.Forward(deadline: DateTime.UtcNow + options.RequestTimeout, cancellationToken: ct),
            header, [.. PromptsFirst(prompts), ("hidden", hidden)], ["hidden"], options).ConfigureAwait(false);
        return Expect(TensorCodec.Decode(reply["hidden"], "hidden"), hidden.shape, server, "hidden");   // [B, T, H]
    }

    /// <summary>Gradients of the hop's inputs, and of its deep prompts when <paramref name="prompts"/> were sent.</summary>
    public static async Task<(Tensor GradInput, Tensor? GradPrompts)> BackwardAsync(ServerConnection server, ChainHop hop, Tensor input,
        Tensor? prompts, Tensor gradOutput, IReadOnlyList<int>? leftPadding, RemoteOptions options, CancellationToken ct)
    {
        var header = Header(hop, leftPadding, options);
        header.WithPrompts = prompts is not null;
        string[] names = prompts is null ? ["grad_input"] : ["grad_input", "grad_prompts"];
        var reply = await CallAsync(server.Client.Backward(deadline: DateTime.UtcNow + options.RequestTimeout, cancellationToken: ct),
            header, [.. PromptsFirst(prompts), ("hidden", input), ("grad_output", gradOutput)], names, options).ConfigureAwait(false);
        var gradInput = Expect(TensorCodec.Decode(reply["grad_input"], "grad_input"), input.shape, server, "grad_input");   // [B, T, H]
        if (prompts is null) return (gradInput, null);
        try { return (gradInput, Expect(TensorCodec.Decode(reply["grad_prompts"], "grad_prompts"), prompts.shape, server, "grad_prompts")); }
        catch
        {
            gradInput.Dispose();
            throw;
        }
    }

    /// <summary>Deep prompts, when given, go with the call; the header's <c>with_prompts</c> tells the server to wait for them.</summary>
    static (string, Tensor)[] PromptsFirst(Tensor? prompts) => prompts is null ? [] : [("prompts", prompts.contiguous())];

    static CallHeader Header(ChainHop hop, IReadOnlyList<int>? leftPadding, RemoteOptions options)
    {
        var header = new CallHeader
        {
            StartBlock = hop.Start, EndBlock = hop.End, OutputCompression = options.Compression, ActiveAdapter = options.ActiveAdapter ?? "",
        };
        if (leftPadding is not null) header.LeftPadding.AddRange(leftPadding);
        return header;
    }

    static async Task<IReadOnlyDictionary<string, PetalsSharp.Wire.V1.Tensor>> CallAsync(AsyncDuplexStreamingCall<CallMessage, CallMessage> call,
        CallHeader header, (string Name, Tensor Value)[] tensors, string[] replyNames, RemoteOptions options)
    {
        using (call)
        {
            // The first read starts before the upload, so a server that refuses the call early ends the upload too.
            var read = call.ResponseStream.MoveNext(CancellationToken.None);
            IEnumerable<CallMessage> Messages()
            {
                yield return new CallMessage { Header = header };
                foreach (var (name, value) in tensors)
                    foreach (var chunk in TensorChunks.Split(name, TensorCodec.Encode(value, options.Compression)))
                        yield return chunk;
            }
            await UploadWhileOpen.WriteAllAsync(call.RequestStream, Messages(), read).ConfigureAwait(false);
            var assembler = new TensorAssembler(replyNames, Protocol.DefaultMaxTensorBytes);
            while (await read.ConfigureAwait(false))
            {
                if (call.ResponseStream.Current.KindCase != CallMessage.KindOneofCase.Chunk)
                    throw new WireException("server replied with something other than tensor chunks");
                assembler.Add(call.ResponseStream.Current.Chunk);
                read = call.ResponseStream.MoveNext(CancellationToken.None);
            }
            assembler.RequireComplete();
            return assembler.Completed;
        }
    }

    /// <summary>A reply must have the shape we sent and finite values: a server is not trusted either.</summary>
    internal static Tensor Expect(Tensor reply, long[] shape, ServerConnection server, string what)
    {
        if (!reply.shape.SequenceEqual(shape))
        {
            var got = string.Join(", ", reply.shape);
            reply.Dispose();
            throw new SwarmException($"{server.Address} returned {what} of shape [{got}], expected [{string.Join(", ", shape)}]");
        }
        try { TensorCodec.RequireFinite(reply, what); }
        catch (WireException e)
        {
            reply.Dispose();
            throw new SwarmException($"{server.Address}: {e.Message}");
        }
        return reply;
    }
}
