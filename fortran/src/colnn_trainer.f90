!> Training steps on a network: forward in training mode, loss, backward, optimizer update.
!> A non-finite loss or gradient is reported with the step number and the trainable weights are
!> left as they were. `online_step` is what a coupled host calls each step with the inputs it
!> passed and the targets it knows.
!>
!> The trainer owns everything training adds to a network: the caches of the training-mode pass
!> (`state`), the optimizer and its state, the loss. This module declares the type and its
!> procedures; colnn_trainer_submodule implements them.
module colnn_trainer
  use colnn_kinds, only: wp, i8
  use colnn_network, only: network_t
  use colnn_training_state, only: training_state_t
  use colnn_spec, only: layer_spec_t
  use colnn_optimizers, only: optimizer_t
  use colnn_losses, only: loss_t
  implicit none
  private

  public :: trainer_t

  type :: trainer_t
    !> the optimizer, with its state vectors (a checkpoint keeps them)
    type(optimizer_t) :: opt
    class(loss_t), allocatable :: loss
    !> successful steps so far
    integer(i8) :: steps = 0
    !> the loss as configured (written to a checkpoint; absent for a loss of the user's own)
    character(len=:), allocatable :: loss_text
    !> the caches of forward_train and backward on the network being trained
    type(training_state_t) :: state
    !> a step's parameters, gradients, outputs and dL/doutputs, kept to allocate them once
    real(wp), allocatable :: p(:), g(:), y(:, :), dy(:, :)
    !> the layers' non-trainable state (batch-norm moving statistics) before the step
    real(wp), allocatable :: saved_layer_state(:)
  contains
    procedure :: configure => trainer_configure
    procedure :: set_loss => trainer_set_loss
    procedure :: train_step => trainer_train_step
    procedure :: online_step => trainer_train_step
    procedure :: train_epoch => trainer_train_epoch
    procedure :: evaluate => trainer_evaluate
    procedure :: describe => trainer_describe
    procedure :: restore => trainer_restore
  end type trainer_t

  interface
    !> Sets the optimizer and the loss, and starts counting steps from 0.
    module subroutine trainer_configure(self, optimizer, loss, stat, errmsg)
      class(trainer_t), intent(inout) :: self
      character(len=*), intent(in) :: optimizer  !! e.g. 'adam learning_rate=0.001'
      character(len=*), intent(in) :: loss       !! 'mse', 'huber delta=1', ...
      integer, intent(out) :: stat               !! COLNN_OK, or a parse error's status
      character(len=*), intent(out) :: errmsg
    end subroutine trainer_configure

    !> The training block of a checkpoint: optimizer (with every parameter), loss, step count and
    !> the optimizer's state vectors, so that training resumes exactly.
    module subroutine trainer_describe(self, spec)
      class(trainer_t), intent(in) :: self
      type(layer_spec_t), intent(out) :: spec  !! for network_t%save(..., training=spec)
    end subroutine trainer_describe

    !> Configures the trainer from a checkpoint's training block.
    module subroutine trainer_restore(self, spec, n, stat, errmsg)
      class(trainer_t), intent(inout) :: self
      type(layer_spec_t), intent(inout) :: spec  !! from network_t%load(..., training=spec)
      integer(i8), intent(in) :: n               !! the network's trainable count
      integer, intent(out) :: stat
      character(len=*), intent(out) :: errmsg     !! the file and line of what is wrong
    end subroutine trainer_restore

    !> A loss of the user's own (an extension of loss_t).
    module subroutine trainer_set_loss(self, loss)
      class(trainer_t), intent(inout) :: self
      class(loss_t), intent(in) :: loss  !! copied into the trainer
    end subroutine trainer_set_loss

    !> One optimizer step on a minibatch (also bound as `online_step`); on any failure the
    !> weights and the batch-norm moving statistics are left as they were.
    module subroutine trainer_train_step(self, net, x, t, loss_value, stat, errmsg)
      class(trainer_t), intent(inout) :: self
      type(network_t), intent(inout) :: net      !! its trainable values are updated
      real(wp), intent(in) :: x(:, :)            !! (n_inputs, nc)
      real(wp), intent(in) :: t(:, :)            !! (the loss' n_targets, nc)
      real(wp), intent(out) :: loss_value        !! the minibatch loss before the update
      integer, intent(out) :: stat               !! COLNN_ERR_NONFINITE names the step
      character(len=*), intent(out) :: errmsg
    end subroutine trainer_train_step

    !> One pass over x(n_inputs, n)/t in minibatches of batch_size (the last one may be smaller),
    !> in a shuffled order when seed /= 0 (a pure function of seed and epoch), else in order.
    !> mean_loss is the mean of the minibatch losses; with x_val/t_val, val_loss is the loss on
    !> them at inference after the epoch.
    module subroutine trainer_train_epoch(self, net, x, t, batch_size, seed, epoch, mean_loss, &
                                          stat, errmsg, x_val, t_val, val_loss)
      class(trainer_t), intent(inout) :: self
      type(network_t), intent(inout) :: net
      real(wp), intent(in) :: x(:, :)            !! (n_inputs, n)
      real(wp), intent(in) :: t(:, :)            !! (the loss' n_targets, n)
      integer, intent(in) :: batch_size
      integer(i8), intent(in) :: seed            !! 0: in order
      integer, intent(in) :: epoch               !! with seed, picks the order
      real(wp), intent(out) :: mean_loss
      integer, intent(out) :: stat
      character(len=*), intent(out) :: errmsg
      real(wp), intent(in), optional :: x_val(:, :), t_val(:, :)
      real(wp), intent(out), optional :: val_loss
    end subroutine trainer_train_epoch

    !> The loss of the network at inference (batch-norm moving statistics, no dropout).
    module subroutine trainer_evaluate(self, net, x, t, loss, stat, errmsg)
      class(trainer_t), intent(inout) :: self
      type(network_t), intent(inout) :: net
      real(wp), intent(in) :: x(:, :)            !! (n_inputs, n)
      real(wp), intent(in) :: t(:, :)            !! (the loss' n_targets, n)
      real(wp), intent(out) :: loss
      integer, intent(out) :: stat
      character(len=*), intent(out) :: errmsg
    end subroutine trainer_evaluate
  end interface

end module colnn_trainer
