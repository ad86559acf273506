using System.CommandLine;
using Microsoft.Extensions.Hosting;
using PetalsSharp.Api.Chat;
using PetalsSharp.Api.Dashboard;
using PetalsSharp.Api.OpenAi;

namespace PetalsSharp.Cli.Commands;

/// <summary><c>petals api</c>: an OpenAI-compatible HTTP server over a distributed (or, with --local, in-process) model.</summary>
public static class ApiCommand
{
    public static Command Create()
    {
        var model = Cli.ModelOption();
        var dtype = Cli.DtypeOption();
        var quant = Cli.QuantOption("the weights this command runs (every block and the embeddings/head locally; with --peers or --initial-peers only the client's embeddings and head)");
        var host = new Option<string>("--host") { Description = "Address to listen on (0.0.0.0 for every interface)", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "Port to listen on (0 = any free port)", DefaultValueFactory = _ => 8000 };
        var local = new Option<bool>("--local") { Description = "Run every block in this process instead of on a swarm" };
        var name = new Option<string>("--model-name") { Description = "Model id clients must send (default: the model folder's name)" };
        var maxRequest = new Option<long>("--max-request-bytes") { Description = "Largest request body accepted; larger ones get HTTP 413", DefaultValueFactory = _ => OpenAiServer.DefaultMaxRequestBytes };
        var remote = new ModelOpener.RemoteOptionSet();
        var cmd = new Command("api", "Serve an OpenAI-compatible API (/v1/models, /v1/completions, /v1/chat/completions) over a model.\n\nExamples:\n  petals api --model ./my-model --initial-peers 127.0.0.1:31337 --port 8000\n  petals api --model ./my-model --local --port 8000")
        {
            model, dtype, quant, host, port, local, name, maxRequest,
        };
        remote.AddTo(cmd);
        var draft = new DraftOptionSet();
        draft.AddTo(cmd);
        var keep = new Option<int>("--keep-sessions")
        {
            Description = "Chat sessions kept open between turns, so a turn sends only its new tokens (0 = off)", DefaultValueFactory = _ => 4,
        };
        var keepIdle = new Option<double>("--keep-idle")
        {
            Description = "Seconds a kept chat session waits for its next turn", DefaultValueFactory = _ => 120,
        };
        cmd.Options.Add(keep);
        cmd.Options.Add(keepIdle);
        cmd.SetAction(async (pr, ct) =>
        {
            var where = remote.Read(pr);
            bool speculative = draft.Requested(pr);
            int kept = pr.GetValue(keep);
            double idle = pr.GetValue(keepIdle);
            if (kept < 0 || kept > 1024) throw new CliException($"--keep-sessions must be in [0, 1024] (got {kept})");
            if (!(idle > 0 && idle <= 86400)) throw new CliException($"--keep-idle must be in (0, 86400] seconds (got {idle})");
            bool swarm = !string.IsNullOrWhiteSpace(where.Peers) || !string.IsNullOrWhiteSpace(where.InitialPeers);
            if (swarm == pr.GetValue(local)) throw new CliException("give --initial-peers (or --peers) to use a swarm, or --local to run the whole model here");
            var (opened, source) = await ModelOpener.OpenWithSourceAsync(pr.GetValue(model)!, Cli.ParseDtypeOrDefault(pr.GetValue(dtype)), where, ct,
                Cli.ParseQuant(pr.GetValue(quant)));
            using var lm = opened;
            var dir = source.Directory;
            if (lm.Tokenizer is null) throw new CliException($"the model folder {dir} has no tokenizer (tokenizer.json or tokenizer.model)");
            // A hub model is known by its repository name (what /v1/models lists), not by its snapshot folder.
            var chat = pr.GetValue(name) is { Length: > 0 } id
                ? new PetalsChatClient(lm, id, Text.Templates.ChatTemplate.TryLoad(dir))
                : source.SwarmName is { } hubName
                    ? new PetalsChatClient(lm, hubName, Text.Templates.ChatTemplate.TryLoad(dir))
                    : PetalsChatClient.ForFolder(lm, dir);
            using var draftLm = speculative ? await draft.LoadModelAsync(pr, lm, ct) : null;
            chat.Engine.DraftModel = draftLm;
            if (speculative)
                chat.Engine.DefaultSpeculative = new Api.Chat.SpeculativeChoice(
                    draftLm is null ? Api.Chat.SpeculativeChoice.PromptLookup : Api.Chat.SpeculativeChoice.DraftModel, pr.GetValue(draft.DraftTokens));
            await using var sessions = kept == 0 ? null : new Api.Chat.ChatSessionCache(lm, kept, TimeSpan.FromSeconds(idle));
            chat.Engine.Sessions = sessions;
            await using var app = OpenAiServer.Build(chat, pr.GetValue(host)!, pr.GetValue(port), pr.GetValue(maxRequest));
            // With a DHT, the same server shows the swarm's dashboard at / (JSON at /api/v1/swarm).
            await using var watcher = string.IsNullOrWhiteSpace(where.InitialPeers) ? null
                : await Api.Dashboard.SwarmWatcher.StartAsync(Cli.SplitList(where.InitialPeers), Cli.LoadSwarmKey(where.SwarmKeyPath),
                    new Api.Dashboard.DashboardSettings { Tls = !where.NoTls }, null, ct);
            if (watcher is not null) app.MapDashboard(() => watcher.Current);
            await app.StartAsync(ct);
            var url = OpenAiServer.Url(app);
            Console.WriteLine($"petals api: model '{chat.Engine.ModelId}' ({(swarm ? "swarm" : "local")}), chat template: {(chat.Template is null ? "none (plain fallback)" : "from tokenizer_config.json")}");
            Console.WriteLine($"listening on {url}");
            if (watcher is not null) Console.WriteLine($"dashboard on {url.TrimEnd('/')}/");
            // The web host handles SIGINT/SIGTERM itself (and stops); a cancelled invocation stops it too.
            try { await app.WaitForShutdownAsync(ct); }
            catch (OperationCanceledException) { }
            await app.StopAsync(CancellationToken.None);
            return 0;
        });
        return cmd;
    }
}
