"""Chinese descriptions of the config keys, for the Chinese config reference of README_zh.md.

`{key: 中文说明}` for every key `llms_trainer.config_reference.all_keys()` lists, each a faithful translation of the
English pydantic Field description in llms_trainer/config.py (key names, values, units and paths stay as in
English). A test fails when a key has no entry here or an entry names a key that no longer exists: change a
description in config.py, change its translation here.
"""

DESCRIPTIONS_ZH: dict[str, str] = {
    "stage": (
        "要运行的阶段：pretrain、sft、reward、dpo、grpo（默认取 data.mode；train_reward_model.py 和 "
        "train_rl.py 会自行设置）"),
    "log_interval": "两次记录指标之间的优化器步数",
    "eval_interval": "两次评估之间的优化器步数（train_and_eval）",
    "save_interval": "两次保存检查点之间的优化器步数",
    "work_dir": "存放检查点、metrics.jsonl、config.yaml 的目录",
    "data.mode": "train_llms.py 运行的阶段（设置了顶层 `stage:` 键时以它为准）",
    "data.data": (
        "数据源名称 → 分片目录或 glob（由 data/compress_data.py 写出的 "
        "data/pretrain_data/<source>/*.jsonl.zst）"),
    "data.sample_policy_file": (
        "JSON {source: ratio}：每个数据源在训练 token 中的目标占比；默认：占比与原始字节数成正比"),
    "data.pad_to_max": "把每个批次都填充到 seq_length（否则填充到批内最长的行）",
    "data.sequence_sample_mode": (
        "concat_multiple_sequence 为 false 时每篇文档取一行：truncation|none 保留前 seq_length 个 token，"
        "sample 取一个随机窗口，split 取每个 seq_length 长的块"),
    "data.concat_multiple_sequence": (
        "把文档（之间以 EOS 分隔）打包成长度恰为 seq_length 的整行，余下部分带入下一行"),
    "data.num_sequences": "为兼容而接受；不起作用：打包会把余下部分带入下一行，而不是拼接固定数量的文档",
    "data.seq_length": "每行的 token 数",
    "data.tokenizer_path": "HF 分词器目录或 hub id；默认：train.ckpt",
    "data.split_by_shard": "为兼容而接受；不起作用：记录逐条分发给 rank × worker，任意数量的分片都能均衡",
    "data.shuffle_buffer_records": "一个数据单元内一起打乱的记录数",
    "data.on_bad_record": (
        "无法使用的训练记录（所有阶段：JSON 嵌套超过 100 层，或含有孤立代理项转义如 \\ud800；sft：没有 "
        "assistant 轮次、有空轮次、角色顺序错误、格式未知；偏好对：不是 JSON、缺少字段、margin 不是数值）："
        "停止并指出文件和行号，或跳过并计数"),
    "data.pack_buffer_conversations": "sft 打包：每轮 best-fit-decreasing 装箱一起分组的对话数",
    "data.document_attention": (
        "预训练打包行：位置编号在每篇文档处重新开始，注意力只在文档内部（SFT 打包总是如此）"),
    "data.reward_model_datasets": (
        "reward 阶段：偏好对 jsonl 文件、glob 或分片目录（compress_data.py --mode reward）；可以是一个路径、"
        "一个列表或 {name: path}"),
    "data.batch_size": "reward 阶段：每个进程每个微批次的偏好对数（取代 train.train_batch_size）",
    "data.dataset_map_num_proc": "为兼容而接受；不起作用：偏好对由快速分词器成批编码",
    "train.train_batch_size": "每个进程（每个设备）每个微批次的行数",
    "train.num_training_steps": (
        "训练的优化器步数（调度长度）；必填，但 reward 阶段在未给出时会由 num_training_epochs 算出"),
    "train.num_warmup_steps": "线性预热的优化器步数",
    "train.initializer_range": "初始化的标准差（仅从头训练时）",
    "train.lr": "峰值学习率",
    "train.min_lr": "衰减结束时的学习率（cosine_with_min_lr、warmup_stable_decay）",
    "train.lr_scheduler_type": (
        "transformers.get_scheduler 的名称：线性预热后余弦衰减到 min_lr | 线性衰减到 0 | 常数 | 先常数、最后"
        "在 num_decay_steps 步内衰减到 min_lr"),
    "train.num_decay_steps": "warmup_stable_decay：最后衰减阶段的优化器步数；默认：num_training_steps 的 10%",
    "train.weight_decay": "AdamW 权重衰减；从不作用于归一化层和偏置",
    "train.resize_model_vocab_size": (
        "模型嵌入的大小与分词器长度不同时，把嵌入调整为分词器的长度（否则大小不同会报错）"),
    "train.ckpt": "作为起点继续训练的 HF 模型目录或 hub id；null：使用 --model_config",
    "train.train_num_workers": "每个 rank 的 DataLoader worker 进程数",
    "train.gradient_accumulation_steps": "每个优化器步的微批次数",
    "train.prefetch_factor": "每个 worker 预取的批次数",
    "train.train_and_eval": "每 eval_interval 步和训练结束时运行 eval.eval_methods",
    "train.gradient_checkpointing_enable": "反向传播时重新计算激活值",
    "train.use_lora": "训练 LoRA 适配器（peft）而不是全部权重",
    "train.target_modules": "LoRA 作用的模块",
    "train.lora_rank": "LoRA 秩 r",
    "train.lora_alpha": "LoRA alpha（缩放系数 = alpha / r）",
    "train.lora_dropout": "LoRA 输入上的 dropout",
    "train.save_total_limit": "保留最新的 N 个完整检查点",
    "train.img_log_dir": "指标 PNG 图的目录；默认：work_dir",
    "train.img_log_name": "指标图的文件名（不含 .png）",
    "train.train_token_embeddings_only": "冻结 token_embedding_layer_name 指定的层以外的所有参数",
    "train.token_embedding_layer_name": (
        "train_token_embeddings_only 时训练的模块名（一个或多个），例如 [embed_tokens, lm_head]"),
    "train.embedding_warmup_steps": (
        "开始时只训练输入和输出词嵌入的优化器步数，学习率为 embedding_warmup_lr（其余权重学习率为 0）；"
        "之后学习率调度在剩余步数上运行。0：关闭"),
    "train.embedding_warmup_lr": "embedding_warmup_steps 期间词嵌入的恒定学习率；默认：train.lr",
    "train.embedding_warmup_rows_from": (
        "embedding_warmup_steps 期间只训练从这个 id 开始的嵌入行（新 token：旧词表大小）；null：所有行"),
    "train.num_training_epochs": (
        "每个数据源都被读完这么多遍时停止（同时受 num_training_steps 限制）；reward 阶段：遍历偏好对的轮数"),
    "train.downscale_weight": "reward 阶段：把新初始化的打分头权重乘以 0.1；在其他阶段不起作用",
    "train.seed": "模型初始化、数据顺序和 dropout 的随机种子",
    "train.resume": "auto：work_dir 中最新的完整检查点 | 一个检查点目录 | none",
    "train.overwrite_work_dir": (
        "全新运行（resume: none）或从显式指定的检查点目录恢复之前，清除 work_dir 中已有的检查点；不设置时这"
        "样的运行会报错停止"),
    "train.max_grad_norm": "裁剪全局梯度范数；null 或 0：关闭",
    "train.mixed_precision": (
        "autocast；auto：取 accelerate 配置中的值，否则在支持 bf16 的 GPU 上用 bf16，否则 no"),
    "train.dtype": "权重的 dtype",
    "train.trust_remote_code": "允许运行检查点自带的模型代码",
    "train.log_with": (
        "accelerate 的 tracker，可选 tensorboard、wandb、aim、comet_ml、mlflow、clearml、dvclive、swanlab、"
        "trackio 中的任意几个（各自需要安装对应的包）"),
    "train.peak_flops_per_device": "单个设备的峰值 FLOP/s，用于计算 MFU；默认：仅限已知型号的 GPU",
    "train.loss_chunk_tokens": (
        "下一 token 损失中每个 LM-head 分块的带标签位置数：只有带标签的位置会送入 LM head，[tokens, vocab] "
        "的 fp32 logits 从不完整存在；0：使用模型自身的完整 logits"),
    "train.compile": (
        "用 torch.compile 编译每个解码层（inductor；在 CPU 上需要 C++ 编译器）；编译期间最初几步较慢；"
        "DeepSpeed ZeRO-3 下不可用"),
    "train.attn_implementation": (
        "注意力内核：sdpa（torch scaled_dot_product_attention）、eager（普通矩阵乘法）、flash_attention_2（"
        "需要 flash-attn 包和 CUDA GPU）"),
    "eval.eval_methods": "single_choice_eval、generation_eval、nll_eval、chat_nll_eval 中的任意几个",
    "eval.single_choice_dataset": "知识题 jsonl 文件（一个或多个）",
    "eval.generation_dataset": "生成提示词 jsonl 文件（一个或多个）",
    "eval.generation_eval_save_path": (
        "step_<n>.json 输出的存放位置；默认 work_dir/generation_eval（旧键名：genration_eval_save_path）"),
    "eval.nll_dataset": "留出文本 jsonl 文件（一个或多个）",
    "eval.source_holdout_records": (
        "预训练：每个来源的最后 N 条记录（按 manifest 顺序）永不参与训练；开启 train_and_eval 时，每隔 "
        "eval_interval 步把它们的每字符 nats 和每 token nats 记为 eval/source/<name>/...；0 表示关闭"),
    "eval.chat_nll_dataset": (
        "chat_nll_eval 使用的留出对话（任意 SFT 记录格式）：只计算 assistant token 的 NLL"),
    "eval.test_reward_model_acc_files": (
        "reward 阶段：用于计算偏好对准确率的留出偏好对 jsonl 文件；可以是一个路径、一个列表或 {name: path}"),
    "eval.save_delta_scores": "reward 阶段：把每次评估的 chosen - rejected 分数差写入 step_<n>.json",
    "eval.delta_scores_save_path": "reward 阶段：分数差文件的目录；默认 work_dir/delta_scores",
    "eval.max_new_tokens": "generation_eval：每个提示词生成的 token 数",
    "eval.few_shot_prefix": "single_choice_eval：放在每道题前面的文本",
    "eval.batch_size": "每个进程每次前向的评估行数",
    "reward.center_rewards_coefficient": (
        "在损失上加 coef * mean((s_chosen + s_rejected)^2)，把分数拉向零均值（即 TRL 中同名选项）；null：关"
        "闭"),
    "dpo.datasets": (
        "偏好对 jsonl 文件 {prompt, selected|chosen, rejected}、glob 或分片目录（compress_data.py --mode "
        "reward），与 reward 阶段的 data.reward_model_datasets 相同；可以是一个路径、一个列表或 {name: "
        "path}"),
    "dpo.eval_datasets": (
        "留出偏好对文件，配合 train.train_and_eval 生成 eval/dpo/<name>/*（损失、相对参考模型的奖励差距和准"
        "确率）"),
    "dpo.beta": "与参考模型绑定的强度（隐式奖励是回复的 beta · log(pi / pi_ref)）",
    "dpo.loss_type": (
        "sigmoid：DPO | ipo：到 1/(2 beta) 的平方距离 | hinge：SLiC | robust：抗噪声 DPO（配合 "
        "label_smoothing）"),
    "dpo.label_smoothing": (
        "假定被翻转的标签占比（sigmoid 时即 cDPO，以及 robust DPO）；0：关闭；不能与 ipo 或 hinge 同用"),
    "dpo.precompute_ref_logps": (
        "开始时用参考模型对每个偏好对打一次分，然后释放参考模型（每步不再做参考模型前向，内存中也没有参考模"
        "型）"),
    "grpo.prompts": (
        "提示词 jsonl 文件（一个或多个）：{prompt} 或 {messages}（以 user 轮次结尾）；其他键作为列传给奖励函"
        "数"),
    "grpo.eval_prompts": (
        "留出提示词：每 eval_interval 步对贪心生成的补全打分（eval/grpo/*），保存到 "
        "work_dir/grpo_eval/step_<n>.json"),
    "grpo.num_generations": "每个提示词采样的补全数（即一组）",
    "grpo.max_new_tokens": "每个补全最多的 token 数；提示词必须在 data.seq_length 中为它们留出空间",
    "grpo.temperature": "采样温度；对数概率按 logits / temperature 计算",
    "grpo.top_p": "核采样（nucleus sampling）的概率质量",
    "grpo.generation_batch_size": "每次调用 generate 生成的补全数",
    "grpo.reward_model": "奖励模型检查点（train_reward_model.py），用它自己的分词器对提示词 + 补全文本打分",
    "grpo.reward_model_weight": "奖励模型分数在总奖励中的系数",
    "grpo.normalize_reward_model": (
        "使用 (score - reward_mean) / reward_std，两者取自奖励模型检查点的 config.json"),
    "grpo.reward_funcs": (
        "Python 奖励函数 [{name: 'module:function' 或 'file.py:function', weight}]，每个都以 f(prompts, "
        "completions, **columns) -> 浮点数列表 的形式调用"),
    "grpo.reward_timeout_s": (
        "奖励函数每次调用（本进程一次 rollout 的全部补全）允许的秒数，超时则运行以错误停止；null：不限时，在主线程中调用"),
    "grpo.scale_rewards": "优势 = 奖励 - 组均值，再除以组标准差 | 批标准差 | 不除",
    "grpo.loss_type": (
        "grpo：token 损失先在每个序列内平均，再在序列间平均 | dr_grpo：求和后除以 序列数 × max_new_tokens "
        "| dapo：在该步所有补全 token 上平均"),
    "grpo.epsilon_low": "把比率的下限裁剪在 1 - epsilon_low",
    "grpo.epsilon_high": "把比率的上限裁剪在 1 + epsilon_high（DAPO：0.28）",
    "grpo.beta": "到冻结起始模型的 k3 KL 的权重；0：完全不加载参考模型",
    "grpo.num_iterations": "每次 rollout 上的优化器步数（从第二步起裁剪才起作用）",
    "grpo.mask_truncated_completions": "在 max_new_tokens 处被截断的补全不计损失",
}
