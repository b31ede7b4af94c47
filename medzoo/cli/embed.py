"""``medzoo embed``: a t-SNE map of one member's penultimate features on the test or val split."""
from __future__ import annotations

COMMANDS = {  # the one-line help of each command, shown by medzoo --help
    "embed": "t-SNE map of a member's penultimate features on test or val, misclassified images marked",
}


def register(sub) -> None:
    p = sub.add_parser(
        "embed",
        help=COMMANDS["embed"],
        description="Map a trained member's penultimate features (the input of its final classifier layer, from "
                    "its kept checkpoint at its input size, no TTA) on the test or val split to 2-D with t-SNE "
                    "(scikit-learn, PCA initialisation), and plot them coloured by true class (by predicted class "
                    "when the split's labels are unknown) with the member's misclassified images marked by a "
                    "black x. Writes RUN_DIR/plots/embedding_<member>_<split>.png and "
                    "RUN_DIR/embeddings/<member>_<split>.csv (id, x, y, label, pred, prob). A cross-validated "
                    "member is mapped through its first fold unit's model.",
    )
    p.add_argument("run_dir", help="a run folder, e.g. results/pneumoniamnist")
    p.add_argument("--member", metavar="ID",
                   help="the member entry to map, e.g. resnet18 or resnet18@s1 (default: the best member by "
                        "validation AUC on the run's leaderboard.csv)")
    p.add_argument("--split", help="test or val (default: test when its labels are known, else val)")
    p.add_argument("--perplexity", type=float, default=30.0,
                   help="t-SNE perplexity, capped at (N - 1) / 3 for N images (default: 30)")
    p.add_argument("--seed", type=int, default=0, help="t-SNE random state (default: 0)")
    p.add_argument("--out", metavar="PNG", help="write the plot here instead of RUN_DIR/plots/")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.set_defaults(func=_embed)


def _embed(args) -> int:
    from medzoo.zoo.embedding import default_member, embed_run

    member = args.member
    if member is None:
        member = default_member(args.run_dir)
        print(f"member {member}: the best member by validation AUC on the run's leaderboard.csv")
    e = embed_run(args.run_dir, member, split=args.split, perplexity=args.perplexity, seed=args.seed,
                  device=args.device, out=args.out)
    print(f"{e.member} on {e.split}: {len(e.ids)} images, {int(e.misclassified.sum())} misclassified, "
          f"{e.features.shape[1]} features per image (unit {e.unit}), t-SNE perplexity {e.perplexity:.3g}, "
          f"seed {e.seed}")
    print(f"wrote {e.png}")
    print(f"wrote {e.csv}")
    return 0
