using System.Globalization;
using Grpc.Core;
using PetalsSharp.Models;
using PetalsSharp.Server;
using PetalsSharp.Wire;
using PetalsSharp.Wire.V1;
using Xunit;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace PetalsSharp.Tests.Server;

/// <summary>
/// A large but acceptable Forward against a real <c>petals server</c> (issue 23, attack 1): the server decodes the
/// chunks straight into the destination tensor, so the call holds its payload about once, and the results are
/// the same as a local forward for every input compression.
/// </summary>
[Trait("Category", "Processes")]
public sealed class StreamedDecodeTests(Xunit.Abstractions.ITestOutputHelper output)
{
    const int Hidden = 64;

    /// <summary>The decoded hidden states of the big call: [6400, 128, 64] float32.</summary>
    const long Batch = 6400, Tokens = 128, DecodedBytes = Batch * Tokens * Hidden * 4;

    /// <summary>
    /// What the server may hold beyond 1.3 × the decoded tensor: garbage 1 MiB chunk messages the GC has not
    /// collected yet, Kestrel's and gRPC's buffers, and the runtime's own noise.
    /// </summary>
    const long Allowance = 64L << 20;

    static long Status(int pid, string field)
    {
        foreach (var line in File.ReadLines($"/proc/{pid}/status"))
            if (line.StartsWith(field + ":", StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
        throw new InvalidOperationException($"no {field}");
    }

    [Theory]
    [InlineData(Compression.None)]
    [InlineData(Compression.Float16)]
    [InlineData(Compression.Int8Blockwise)]
    public async Task A_large_accepted_forward_holds_its_decoded_payload_about_once(Compression compression)
    {
        // Limits raised so that 819 200 tokens (200 MiB of float32 hidden states) are a valid request.
        using var server = await ServerProcess.StartAsync(TestData.Path("llama-gqa"), 0, 3, "--max-request-tokens", "1000000");
        using var client = new ServerClient(server.Address);
        using (var x = randn(1, 8, Hidden)) (await client.ForwardAsync(x, ServerClient.Header(0, 3))).Dispose();

        List<CallMessage> chunks;
        using (var big = randn(Batch, Tokens, Hidden))   // [B, T, H]
            chunks = TensorChunks.Split("hidden", TensorCodec.Encode(big, compression)).ToList();
        long wireBytes = chunks.Sum(c => (long)c.Chunk.Part.Length);

        // An adapter the server does not hold is refused after the tensor is decoded and checked, before compute:
        // what is measured is receiving and decoding, not the blocks' activations.
        var header = ServerClient.Header(0, 3);
        header.ActiveAdapter = "not-loaded";
        long baseline = Status(server.Id, "VmRSS");
        bool peakReset = TryResetPeak(server.Id);
        long sampled = baseline;
        using var sampling = new CancellationTokenSource();
        var sampler = Task.Run(async () =>
        {
            while (!sampling.IsCancellationRequested)
            {
                sampled = Math.Max(sampled, Status(server.Id, "VmRSS"));
                await Task.Delay(10);
            }
        });
        using (var call = client.Raw.Forward(deadline: DateTime.UtcNow.AddMinutes(5)))
        {
            await call.RequestStream.WriteAsync(new CallMessage { Header = header });
            foreach (var m in chunks) await call.RequestStream.WriteAsync(m);
            var e = await Assert.ThrowsAsync<RpcException>(async () => await call.ResponseStream.MoveNext(CancellationToken.None));
            Assert.True(e.StatusCode == StatusCode.FailedPrecondition && e.Status.Detail.Contains("not-loaded", StringComparison.Ordinal),
                $"{e.StatusCode}: {e.Status.Detail}");
        }
        await sampling.CancelAsync();
        await sampler;
        long peak = Math.Max(sampled, peakReset ? Status(server.Id, "VmHWM") : 0);
        long growth = peak - baseline, bound = DecodedBytes * 13 / 10 + Allowance;
        output.WriteLine($"{compression}: {wireBytes >> 20} MiB on the wire, {DecodedBytes >> 20} MiB decoded; RSS {baseline >> 20} MB → peak {peak >> 20} MB "
            + $"(+{growth >> 20} MB = {(double)growth / DecodedBytes:F2} × decoded; {(peakReset ? "VmHWM" : "sampled")}); bound {bound >> 20} MB");
        Assert.True(growth <= bound, $"{compression}: RSS grew by {growth >> 20} MB for {DecodedBytes >> 20} MiB decoded (bound {bound >> 20} MB)");

        // Still serving, with its limits intact.
        using (var x = randn(1, 8, Hidden)) (await client.ForwardAsync(x, ServerClient.Header(0, 3))).Dispose();
    }

    /// <summary>Writing 5 to clear_refs resets VmHWM (Linux 4.0+), so the peak seen is this call's.</summary>
    static bool TryResetPeak(int pid)
    {
        try
        {
            File.WriteAllText($"/proc/{pid}/clear_refs", "5");
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    [Fact]
    public async Task Forward_through_a_server_equals_a_local_forward_for_every_input_compression()
    {
        using var server = await ServerProcess.StartAsync(TestData.Path("llama-gqa"), 0, 3);
        using var client = new ServerClient(server.Address);
        using var checkpoint = Checkpoint.Open(TestData.Path("llama-gqa"));
        using var local = checkpoint.LoadBlocks(0, 3);
        using var x = randn(3, 37, Hidden, generator: new Generator(17));   // [B, T, H]; 3·37·64 is no multiple of 64
        foreach (var c in TensorCodec.Supported)
        {
            using var sent = TensorCodec.Decode(TensorCodec.Encode(x, c), "x");   // [B, T, H], as the server must see it
            using var expected = LocalForward(local, sent);                     // [B, T, H]
            using var actual = await client.ForwardAsync(x, ServerClient.Header(0, 3), c);   // [B, T, H]
            TensorAssert.Close(expected, actual, 1e-6, 1e-5, c.ToString());
        }
    }

    static Tensor LocalForward(LocalBlockStack stack, Tensor x)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        return stack.Forward(x).MoveToOuterDisposeScope();
    }
}
