"""Config sections of the stages whose files would pass 400 lines with them (dpo, grpo); each is imported by
its own stage only."""
