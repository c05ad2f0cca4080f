!> colnn: neural-network inference for Fortran models, over (features, columns) blocks.
!> `use colnn` brings the whole public API.
module colnn
  use colnn_kinds, only: wp, sp, dp, ERRMSG_LEN, wp_name
  use colnn_status
  use colnn_activations, only: activation_t, parse_activation
  use colnn_spec, only: layer_spec_t
  use colnn_layer, only: layer_t
  use colnn_registry, only: layer_factory, register_layer
  use colnn_network, only: network_t, workspace_t, BATCH_INVARIANT_DEFAULT
  use colnn_blas, only: invariant_kernel_name
  use colnn_ensemble, only: ensemble_t
  use colnn_losses, only: loss_t, builtin_loss_t, parse_loss
  use colnn_optimizers, only: optimizer_t, parse_optimizer
  use colnn_trainer, only: trainer_t
  use colnn_training_state, only: training_state_t
  use colnn_dense, only: dense_t
  use colnn_dropout, only: dropout_t
  use colnn_batchnorm, only: batchnorm_t
  use colnn_normalization, only: normalization_t
  use colnn_activation_layer, only: activation_layer_t
  implicit none
  private

  public :: wp, sp, dp, ERRMSG_LEN, wp_name
  public :: COLNN_OK, COLNN_ERR_IO, COLNN_ERR_FORMAT, COLNN_ERR_ARGUMENT, COLNN_ERR_NONFINITE, &
            COLNN_ERR_UNSUPPORTED, COLNN_ERR_MEMORY, COLNN_ERR_NOT_IMPLEMENTED, status_name
  public :: activation_t, parse_activation, layer_spec_t, layer_t, layer_factory, register_layer
  public :: network_t, workspace_t, ensemble_t, BATCH_INVARIANT_DEFAULT, invariant_kernel_name
  public :: loss_t, builtin_loss_t, parse_loss, optimizer_t, parse_optimizer, trainer_t, &
            training_state_t
  public :: dense_t, dropout_t, batchnorm_t, normalization_t, activation_layer_t
  public :: colnn_version

  character(len=*), parameter :: colnn_version = '0.1.0'
end module colnn
