"""Hello world with arguments: reads the task's json_args and prints a greeting."""

import sdk

args = sdk.task_args()
print(f"hello from a task: in_task={sdk.in_task()}")
print(f"workspace={args.get('workspace_name', '-')} pipeline={args.get('pipeline_name', '-')}")
