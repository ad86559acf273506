using System.CommandLine;
using PetalsSharp.Cli;
using PetalsSharp.Cli.Commands;

ServerGen0.ReexecuteIfUnset(args);
PetalsSharp.Runtime.Configure();
PetalsSharp.Server.ParentWatchdog.StartFromEnvironment();

var root = new RootCommand("petals: run large language models collaboratively, BitTorrent-style (PetalsSharp).")
{
    DemoCommand.Create(),
    GenerateCommand.Create(),
    FinetuneCommand.Create(),
    InspectCommand.Create(),
    CreateModelCommand.Create(),
    ServerCommand.Create(),
    BenchCommand.Create(),
    LoadCommand.Create(),
    DhtCommand.Create(),
    SwarmCommand.Create(),
    DashboardCommand.Create(),
    ApiCommand.Create(),
};
return await Cli.InvokeAsync(root, args);
