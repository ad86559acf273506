using System.Text;
using Google.Protobuf;
using Grpc.Core;
using PetalsSharp.Wire.V1;
using static PetalsSharp.Tests.Security.BlockTarget;

namespace PetalsSharp.Tests.Security;

/// <summary>
/// Attacks on sessions: ids nobody opened, ids and tokens of someone else's session, pushes replayed after they
/// were applied, and strings that are not UTF-8. A victim session is opened for each case that needs one and must
/// step on undisturbed afterwards.
/// </summary>
static class BlockSessionCases
{
    const string S = "block service (gRPC)";

    public static IEnumerable<HostileCase> All(BlockTarget b) => Unknown(b).Concat(Stolen(b)).Concat(Replayed(b)).Concat(Utf8(b));

    static HostileCase Case(string category, string name, string[] expected, Func<Task<Outcome>> run, string? says = null) =>
        new(S, category, name, expected, run, says);

    static PushRequest Push(string session, string token, string stepId = "p1", int tokens = 1) =>
        new() { SessionId = session, PushToken = token, Step = new InferenceStep { StepId = stepId, Hidden = Hidden(1, tokens) } };

    static IEnumerable<HostileCase> Unknown(BlockTarget b)
    {
        const string C = "unknown session id";
        string[] denied = ["PermissionDenied"];
        foreach (var (name, id) in new[] { ("a random UUID", Guid.NewGuid().ToString("N")), ("'s1'", "s1"), ("128 characters", new string('z', 128)),
                     ("in Japanese", "セッション"), ("a path", "../../admin") })
            yield return Case(C, $"Push into {name}", denied, () => b.PushAsync(Push(id, Guid.NewGuid().ToString("N"))));
        yield return Case(C, "PushStream into a random UUID", denied, () => b.PushStreamAsync(Push(Guid.NewGuid().ToString("N"), "t")));
        yield return Case(C, "Push into a session closed a moment ago, with its token", denied, async () =>
        {
            var victim = await Victim.OpenAsync(b, "token-of-a-closed-session");
            await victim.CloseAsync();
            return await b.PushAsync(Push(victim.Id, victim.Token));
        });
        yield return Case(C, "Push with an empty session id", ["InvalidArgument"], () => b.PushAsync(Push("", "t")));
        yield return Case(C, "Push with a session id of 129 characters", ["InvalidArgument"], () => b.PushAsync(Push(new string('z', 129), "t")));
    }

    static IEnumerable<HostileCase> Stolen(BlockTarget b)
    {
        const string C = "stolen session id";
        string[] denied = ["PermissionDenied"];
        // The attack runs while the victim's session is open; the victim must then still step from where it was.
        HostileCase Against(string name, string[] expected, Func<Victim, Task<Outcome>> attack, bool withToken = true) =>
            Case(C, name, expected, async () =>
            {
                await using var victim = await Victim.OpenAsync(b, withToken ? Guid.NewGuid().ToString("N") : "");
                await victim.StepAsync("v1", 2);
                Outcome outcome;
                try { outcome = await attack(victim); }
                catch (RpcException e) { outcome = Outcome.Of(e); }
                var after = await victim.StepAsync("v2", 1);
                return after.Position == 3 ? outcome : new Outcome("victim disturbed", $"the victim's next step ended at position {after.Position}, not 3");
            });
        yield return Against("OpenSession with the victim's id", ["AlreadyExists"], v => b.InferenceAsync(Open(id: v.Id)));
        yield return Against("OpenSession with the victim's id on other blocks", ["AlreadyExists"], v => b.InferenceAsync(Open(id: v.Id, start: 0, end: 1)));
        yield return Against("Push without a token", denied, v => b.PushAsync(Push(v.Id, "")));
        yield return Against("Push with a guessed token", denied, v => b.PushAsync(Push(v.Id, Guid.NewGuid().ToString("N"))));
        yield return Against("Push with the token's last character changed", denied, v => b.PushAsync(Push(v.Id, v.Token[..^1] + (v.Token[^1] == 'a' ? 'b' : 'a'))));
        yield return Against("Push with half of the token", denied, v => b.PushAsync(Push(v.Id, v.Token[..(v.Token.Length / 2)])));
        yield return Against("Push with the token and one character more", denied, v => b.PushAsync(Push(v.Id, v.Token + "x")));
        yield return Against("Push with the token into the id in upper case", denied, v => b.PushAsync(Push(v.Id.ToUpperInvariant(), v.Token)));
        yield return Against("PushStream with a guessed token", denied, v => b.PushStreamAsync(Push(v.Id, "guess")));
        yield return Against("Push without a token into a session that takes no pushes", denied, v => b.PushAsync(Push(v.Id, "")), withToken: false);
    }

    static IEnumerable<HostileCase> Replayed(BlockTarget b)
    {
        const string C = "replayed push";
        string[] denied = ["PermissionDenied"];
        // The campaign plays the previous server of a chain, which holds the token, and replays what it pushed.
        yield return Case(C, "the last push again", ["NotReapplied"], async () =>
        {
            await using var v = await Victim.OpenAsync(b, Guid.NewGuid().ToString("N"));
            var push = Push(v.Id, v.Token, "p1", 2);
            await b.PushAsync(push);
            var first = await v.ReadAsync();
            await b.PushAsync(push);
            var again = await v.ReadAsync();
            return again.StepId == "p1" && again.Position == first.Position
                ? new Outcome("NotReapplied", $"step 'p1' answered again at position {again.Position}, not applied twice")
                : new Outcome("Reapplied", $"position {first.Position} then {again.Position}");
        });
        yield return Case(C, "an older push after a newer one", ["FailedPrecondition"], async () =>
        {
            await using var v = await Victim.OpenAsync(b, Guid.NewGuid().ToString("N"));
            await b.PushAsync(Push(v.Id, v.Token, "p1"));
            await v.ReadAsync();
            await b.PushAsync(Push(v.Id, v.Token, "p2"));
            await v.ReadAsync();
            await b.PushAsync(Push(v.Id, v.Token, "p1"));
            return await v.EndAsync();
        });
        yield return Case(C, "an older step id with other hidden states", ["FailedPrecondition"], async () =>
        {
            await using var v = await Victim.OpenAsync(b, Guid.NewGuid().ToString("N"));
            await b.PushAsync(Push(v.Id, v.Token, "p1"));
            await v.ReadAsync();
            await b.PushAsync(Push(v.Id, v.Token, "p2"));
            await v.ReadAsync();
            await b.PushAsync(Push(v.Id, v.Token, "p1", 3));
            return await v.EndAsync();
        });
        yield return Case(C, "a push after the session closed", denied, async () =>
        {
            var v = await Victim.OpenAsync(b, Guid.NewGuid().ToString("N"));
            var push = Push(v.Id, v.Token);
            await b.PushAsync(push);
            await v.ReadAsync();
            await v.CloseAsync();
            return await b.PushAsync(push);
        });
        yield return Case(C, "a push into the id reopened with a new token", denied, async () =>
        {
            var v = await Victim.OpenAsync(b, Guid.NewGuid().ToString("N"));
            var push = Push(v.Id, v.Token);
            await b.PushAsync(push);
            await v.CloseAsync();
            await using var reopened = await Victim.OpenAsync(b, Guid.NewGuid().ToString("N"), v.Id);
            return await b.PushAsync(push);
        });
        yield return Case(C, "a PushStream push after the session closed", denied, async () =>
        {
            var v = await Victim.OpenAsync(b, Guid.NewGuid().ToString("N"));
            await v.CloseAsync();
            return await b.PushStreamAsync(Push(v.Id, v.Token));
        });
        yield return Case(C, "one session's token on another session", denied, async () =>
        {
            await using var first = await Victim.OpenAsync(b, Guid.NewGuid().ToString("N"));
            await using var second = await Victim.OpenAsync(b, Guid.NewGuid().ToString("N"));
            return await b.PushAsync(Push(second.Id, first.Token));
        });
        yield return Case(C, "a client's own step sent twice in a row", ["NotReapplied"], async () =>
        {
            await using var v = await Victim.OpenAsync(b, "");
            var first = await v.StepAsync("s1", 2);
            var again = await v.StepAsync("s1", 2);
            return again.Position == first.Position
                ? new Outcome("NotReapplied", $"step 's1' answered again at position {again.Position}")
                : new Outcome("Reapplied", $"position {first.Position} then {again.Position}");
        });
        yield return Case(C, "a client's older step after a newer one", ["FailedPrecondition"], async () =>
        {
            await using var v = await Victim.OpenAsync(b, "");
            await v.StepAsync("s1", 1);
            await v.StepAsync("s2", 1);
            await v.SendAsync(Step("s1", Hidden(1, 1)));
            return await v.EndAsync();
        });
    }

    /// <summary>Byte sequences that are not UTF-8: a byte never used, an overlong '/', an encoded surrogate.</summary>
    static readonly (string Name, byte[] Bytes)[] BadUtf8 = [("0xFF", [0xFF]), ("overlong C0 AF", [0xC0, 0xAF]), ("surrogate ED A0 80", [0xED, 0xA0, 0x80])];

    internal const string Marker = "~~PLACEHOLDER~~";

    /// <summary>Serializes a message and overwrites the marker string's bytes with <paramref name="bad"/>, padded to the same length.</summary>
    internal static byte[] Splice(IMessage message, byte[] bad)
    {
        var bytes = message.ToByteArray();
        var marker = Encoding.ASCII.GetBytes(Marker);
        int at = bytes.AsSpan().IndexOf(marker);
        if (at < 0) throw new InvalidOperationException("no marker in the message");
        bad.CopyTo(bytes, at);
        for (int i = bad.Length; i < marker.Length; i++) bytes[at + i] = (byte)'a';
        return bytes;
    }

    static IEnumerable<HostileCase> Utf8(BlockTarget b)
    {
        const string C = "invalid UTF-8";
        var hidden = Hidden(1, 1);
        foreach (var (pattern, bad) in BadUtf8)
        {
            var fields = new (string Field, Func<Task<Outcome>> Send)[]
            {
                ("OpenSession.session_id", () => Stream("Inference", Splice(Open(id: Marker), bad))),
                ("OpenSession.active_adapter", () => { var o = Open(); o.Open.ActiveAdapter = Marker; return Stream("Inference", Splice(o, bad)); }),
                ("OpenSession.push_token", () => Stream("Inference", Splice(Open(token: Marker), bad))),
                ("InferenceStep.step_id", () => Stream("Inference", Open().ToByteArray(), Splice(Step(Marker, hidden), bad))),
                ("NextServer.address", () =>
                {
                    var step = Step("a", hidden);
                    step.Step.NextServers.Add(new NextServer { Address = Marker, SessionId = "n", StepId = "m" });
                    return Stream("Inference", Open().ToByteArray(), Splice(step, bad));
                }),
                ("PushRequest.session_id", () => CampaignChannels.UnaryBytesAsync(b.Channel, Service, "Push", Splice(Push(Marker, "t"), bad))),
                ("PushRequest.push_token", () => CampaignChannels.UnaryBytesAsync(b.Channel, Service, "Push", Splice(Push("s", Marker), bad))),
                ("CallHeader.active_adapter", () =>
                {
                    var header = new CallMessage { Header = Header() };
                    header.Header.ActiveAdapter = Marker;
                    return Stream("Forward", Splice(header, bad));
                }),
                ("TensorChunk.name", () => Stream("Forward", new CallMessage { Header = Header() }.ToByteArray(),
                    Splice(Chunk(Marker, 10, new byte[10], true), bad))),
            };
            foreach (var (field, send) in fields) yield return Case(C, $"{field} with {pattern}", ["InvalidArgument"], send, "UTF-8");
        }

        Task<Outcome> Stream(string method, params byte[][] messages) => CampaignChannels.StreamBytesAsync(b.Channel, Service, method, messages);
    }
}
